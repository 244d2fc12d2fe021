"""Scale-out on Ray (extra ``[ray]``): shards built by Ray tasks, and shards served by Ray actors.

* :func:`build_kb_on_ray` / :class:`RayShardWriter`: one KB's shards indexed in parallel, one task per
  shard; the same files as a local build.
* :func:`open_remote_kb` / :class:`RemoteShardSet`: a :class:`~gemkr_llamaindex.kb.KnowledgeBase` whose
  shards live in Ray actors, behind the same constraint interface the decoder uses.

Distributed evaluation over Ray Data is ``eval-vqa retrieval --ray`` (:mod:`eval_vqa.distributed`).
"""

from gemkr_llamaindex.distributed.remote_kb import RemoteShardSet, open_remote_kb, shard_groups
from gemkr_llamaindex.distributed.shard_build import RayShardWriter, build_kb_on_ray

__all__ = ["RayShardWriter", "RemoteShardSet", "build_kb_on_ray", "open_remote_kb", "shard_groups"]
