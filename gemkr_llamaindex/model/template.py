"""The unified instruction template (paper §Instruction Data Construction).

A task description, the instruction built from the textual query, an optional slot of visual tags (a
plain pre-formatted string such as ``"tiger cat, Egyptian cat, EMT"``), the slot where the aligned visual
tokens are spliced into the LLM's input embeddings, and the response marker after which the knowledge
clue is generated (and on which alone the loss is computed).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TASK = (
    "Given an image and a question, write a short passage, copied word for word from the knowledge base, "
    "that holds the knowledge needed to answer the question."
)
IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class InstructionTemplate:
    """Renders the text around the visual slot: ``before`` + [visual tokens] + ``after``."""

    task: str = DEFAULT_TASK
    response_marker: str = "### Response:"

    def split(self, question: str, tags: str | None = None, image_slot: bool = True) -> tuple[str, str]:
        """The text before and after the visual-token slot for one query (a model without a vision tower
        has no slot: ``image_slot=False`` leaves the ``### Image:`` line out)."""
        if not isinstance(question, str):
            raise TypeError(f"question must be a str, got {type(question).__name__}")
        before = (f"{self.task}\n" if self.task else "") + f"### Question: {question.strip()}\n"
        if tags:
            before += f"### Visual tags: {tags.strip()}\n"
        if not image_slot:
            return before.rstrip("\n"), f"\n{self.response_marker}"
        before += "### Image:"
        after = f"\n{self.response_marker}"
        return before, after

    def render(self, question: str, tags: str | None = None, image_slot: bool = True) -> str:
        """The prompt as text, with a placeholder where the visual tokens go (for logs and docs)."""
        before, after = self.split(question, tags, image_slot)
        return f"{before} {IMAGE_PLACEHOLDER}{after}" if image_slot else f"{before}{after}"
