// Python bindings of the FM-index core. Inputs are checked and made contiguous here; the loops run
// without the GIL; results come back as numpy arrays that own their buffers (no copies of big data).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <string_view>
#include <vector>

#include "gemkr/fm_index.hpp"
#include "gemkr/shard_set.hpp"
#include "gemkr/xxh64.hpp"

namespace py = pybind11;
using gemkr::ShardSet;

namespace {

using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({py::ssize_t(heap->size())}, {py::ssize_t(sizeof(T))}, heap->data(), owner);
}

// States arrive as (B, S, 2) int64; check the shape and that every range lies inside its shard. An
// entry is a range (lo, hi >= 0) or a terminal one (~lo, ~hi: both negative, lo < hi); a terminal state
// has no non-empty plain entry.
int64_t check_states(const ShardSet& set, const I64Array& states) {
  const size_t S = set.n_shards();
  if (states.ndim() != 3 || size_t(states.shape(1)) != S || states.shape(2) != 2)
    throw py::value_error("states must have shape (batch, " + std::to_string(S) + ", 2), got ndim " +
                          std::to_string(states.ndim()));
  const int64_t B = states.shape(0);
  const int64_t* p = states.data();
  for (int64_t b = 0; b < B; ++b) {
    bool plain = false, term = false;
    for (size_t s = 0; s < S; ++s) {
      int64_t lo = p[(b * S + s) * 2], hi = p[(b * S + s) * 2 + 1];
      const uint64_t n = set.shard(s).n_rows();
      bool ok;
      if (lo < 0 && hi < 0) {
        lo = ~lo;
        hi = ~hi;
        ok = lo < hi && uint64_t(hi) <= n;
        term = true;
      } else {
        ok = lo >= 0 && hi >= 0 && uint64_t(lo) <= n && uint64_t(hi) <= n;
        plain = plain || hi > lo;
      }
      if (!ok || (plain && term))
        throw py::value_error("state " + std::to_string(b) + " has a range outside shard " + std::to_string(s) +
                              "; states must come from this KnowledgeBase");
    }
  }
  return B;
}

I64Array check_tokens(const I64Array& tokens, int64_t B, bool allow_end) {
  if (tokens.ndim() != 1 || tokens.shape(0) != B) throw py::value_error("tokens must be 1-D with one token per state");
  if (allow_end) {
    const int64_t* t = tokens.data();
    for (int64_t b = 0; b < B; ++b)
      if (t[b] < gemkr::kEnd)
        throw py::value_error("token " + std::to_string(t[b]) + " (state " + std::to_string(b) +
                              ") is negative; token ids are >= 0, or END (-1) to end at a document's end");
  }
  return tokens;
}

I64Array new_states(int64_t B, size_t S) { return I64Array({py::ssize_t(B), py::ssize_t(S), py::ssize_t(2)}); }

}  // namespace

PYBIND11_MODULE(_fmindex, m) {
  m.doc() = "FM-index core of gemkr-llamaindex (per-document-reversed token text, wavelet matrix, SA-IS)";
  m.attr("FORMAT_VERSION") = gemkr::kFormatVersion;
  m.attr("END") = gemkr::kEnd;
  // A corrupt shard raises the package's IndexFormatError (a KBError), so callers need one except clause.
  py::object base = py::module_::import("gemkr_llamaindex.kb.errors").attr("IndexFormatError");
  py::register_exception<gemkr::FormatError>(m, "FormatError", base);

  m.def(
      "xxh64_file",
      [](const std::string& path) {
        uint64_t h;
        {
          py::gil_scoped_release release;
          h = gemkr::xxh64_file(path);
        }
        return h;
      },
      py::arg("path"), "XXH64 (seed 0) of a whole file, read sequentially without the GIL.");
  m.def(
      "xxh64",
      [](py::bytes data, uint64_t seed) {
        std::string_view v = data;
        return gemkr::XXH64::hash(v.data(), v.size(), seed);
      },
      py::arg("data"), py::arg("seed") = 0, "XXH64 of a bytes object.");

  py::class_<gemkr::ShardBuilder>(m, "ShardBuilder",
                                  "Two-phase shard build: the constructor copies the tokens into the index's "
                                  "text, so the caller can drop its token array before write() runs.")
      .def(py::init([](py::array_t<uint32_t, py::array::c_style | py::array::forcecast> tokens,
                       py::array_t<uint64_t, py::array::c_style | py::array::forcecast> doc_offsets) {
             if (doc_offsets.ndim() != 1 || doc_offsets.shape(0) < 2)
               throw py::value_error("doc_offsets must be 1-D with at least two entries");
             const uint64_t n_docs = uint64_t(doc_offsets.shape(0) - 1);
             const uint64_t* off = doc_offsets.data();
             for (uint64_t d = 0; d < n_docs; ++d)
               if (off[d + 1] < off[d]) throw py::value_error("doc_offsets must be non-decreasing");
             if (off[n_docs] > uint64_t(tokens.size())) throw py::value_error("doc_offsets run past the token array");
             py::gil_scoped_release release;
             return new gemkr::ShardBuilder(tokens.data(), off, n_docs);
           }),
           py::arg("tokens"), py::arg("doc_offsets"))
      .def(
          "write",
          [](gemkr::ShardBuilder& b, const std::string& path, uint32_t sample_rate, uint32_t cache_min_children,
             uint32_t cache_max_depth, double cache_max_fraction) {
            gemkr::BuildParams params;
            params.sample_rate = sample_rate;
            params.cache_min_children = cache_min_children;
            params.cache_max_depth = cache_max_depth;
            params.cache_max_fraction = cache_max_fraction;
            py::gil_scoped_release release;
            b.write(path, params);
          },
          py::arg("path"), py::arg("sample_rate") = 8, py::arg("cache_min_children") = 512,
          py::arg("cache_max_depth") = 3, py::arg("cache_max_fraction") = 0.25,
          "Build the index and write the shard file (once).");

  m.def(
      "suffix_array",
      [](py::array_t<int32_t, py::array::c_style | py::array::forcecast> text, int32_t alphabet_size) {
        std::vector<int32_t> sa(size_t(text.size()));
        {
          py::gil_scoped_release release;
          gemkr::suffix_array(text.data(), sa.data(), int64_t(text.size()), alphabet_size);
        }
        return to_numpy(std::move(sa));
      },
      "SA-IS suffix array of an int32 text that ends with a unique 0 (exposed for tests).");

  py::class_<ShardSet>(m, "ShardSet")
      .def(py::init<const std::vector<std::string>&>(), py::arg("paths"))
      .def_property_readonly("n_shards", &ShardSet::n_shards)
      .def_property_readonly("n_docs", &ShardSet::n_docs)
      .def("shard_info",
           [](const ShardSet& s, size_t i) {
             if (i >= s.n_shards()) throw py::index_error("no such shard");
             const auto& f = s.shard(i);
             py::dict d;
             d["n_rows"] = f.n_rows();
             d["n_tokens"] = f.n_tokens();
             d["n_docs"] = f.n_docs();
             d["sigma"] = f.sigma();
             d["levels"] = f.levels();
             d["sample_rate"] = f.sample_rate();
             d["max_doc_len"] = f.max_doc_len();
             d["cache_entries"] = f.cache_entries();
             d["file_size"] = f.file_size();
             d["doc_base"] = s.doc_base(i);
             return d;
           })
      .def("shard_alphabet",
           [](const ShardSet& s, size_t i) {
             if (i >= s.n_shards()) throw py::index_error("no such shard");
             const auto& f = s.shard(i);
             return to_numpy(std::vector<uint32_t>(f.alphabet(), f.alphabet() + f.alphabet_size()));
           })
      .def(
          "root",
          [](const ShardSet& s, int64_t batch, bool anchored) {
            if (batch < 0) throw py::value_error("batch must be >= 0");
            auto out = new_states(batch, s.n_shards());
            int64_t* p = out.mutable_data();
            for (int64_t b = 0; b < batch; ++b) s.root(p + b * int64_t(s.n_shards()) * 2, anchored);
            return out;
          },
          py::arg("batch"), py::arg("anchored") = false)
      .def(
          "search",
          [](const ShardSet& s, I64Array ids, bool anchored) {
            auto out = new_states(1, s.n_shards());
            int64_t* p = out.mutable_data();
            py::gil_scoped_release release;
            s.search(ids.data(), int64_t(ids.size()), p, anchored);
            return out;
          },
          py::arg("ids"), py::arg("anchored") = false)
      // One-call versions of the static queries for a single prefix (search + answer, no state round trip).
      .def("count_of",
           [](const ShardSet& s, I64Array ids) {
             std::vector<int64_t> st(2 * s.n_shards());
             int64_t out = 0;
             py::gil_scoped_release release;
             s.search(ids.data(), int64_t(ids.size()), st.data());
             s.counts(st.data(), 1, &out);
             return out;
           })
      .def("unique_doc_of",
           [](const ShardSet& s, I64Array ids) {
             std::vector<int64_t> st(2 * s.n_shards());
             int64_t out = -1;
             py::gil_scoped_release release;
             s.search(ids.data(), int64_t(ids.size()), st.data());
             s.unique_docs(st.data(), 1, &out);
             return out;
           })
      .def("docs_of",
           [](const ShardSet& s, I64Array ids) {
             std::vector<int64_t> st(2 * s.n_shards()), out;
             {
               py::gil_scoped_release release;
               s.search(ids.data(), int64_t(ids.size()), st.data());
               out = s.docs(st.data());
             }
             return to_numpy(std::move(out));
           })
      .def("step",
           [](const ShardSet& s, I64Array states, I64Array tokens) {
             const int64_t B = check_states(s, states);
             check_tokens(tokens, B, true);
             auto out = new_states(B, s.n_shards());
             std::vector<int64_t> counts(size_t(B), 0), unique(size_t(B), -1);
             {
               py::gil_scoped_release release;
               s.step(states.data(), tokens.data(), B, out.mutable_data(), counts.data(), unique.data());
             }
             return py::make_tuple(out, to_numpy(std::move(counts)), to_numpy(std::move(unique)));
           })
      .def("extend",
           [](const ShardSet& s, I64Array states, I64Array tokens) {
             const int64_t B = check_states(s, states);
             check_tokens(tokens, B, false);
             auto out = new_states(B, s.n_shards());
             int64_t* p = out.mutable_data();
             py::gil_scoped_release release;
             s.extend(states.data(), tokens.data(), B, p);
             return out;
           })
      .def("counts",
           [](const ShardSet& s, I64Array states) {
             const int64_t B = check_states(s, states);
             std::vector<int64_t> out(size_t(B), 0);
             {
               py::gil_scoped_release release;
               s.counts(states.data(), B, out.data());
             }
             return to_numpy(std::move(out));
           })
      .def("unique_docs",
           [](const ShardSet& s, I64Array states) {
             const int64_t B = check_states(s, states);
             std::vector<int64_t> out(size_t(B), -1);
             {
               py::gil_scoped_release release;
               s.unique_docs(states.data(), B, out.data());
             }
             return to_numpy(std::move(out));
           })
      .def("docs",
           [](const ShardSet& s, I64Array states) {
             const int64_t B = check_states(s, states);
             if (B != 1) throw py::value_error("docs takes exactly one state");
             std::vector<int64_t> out;
             {
               py::gil_scoped_release release;
               out = s.docs(states.data());
             }
             return to_numpy(std::move(out));
           })
      .def(
          "search_many",
          [](const ShardSet& s, I64Array ids, I64Array offsets, bool anchored) {
            if (ids.ndim() != 1 || offsets.ndim() != 1 || offsets.shape(0) < 1)
              throw py::value_error("search_many takes 1-D ids and 1-D offsets with at least one entry");
            const int64_t B = offsets.shape(0) - 1;
            const int64_t* off = offsets.data();
            if (off[0] != 0 || off[B] != ids.shape(0))
              throw py::value_error("offsets must start at 0 and end at len(ids)");
            for (int64_t b = 0; b < B; ++b)
              if (off[b + 1] < off[b]) throw py::value_error("offsets must be non-decreasing");
            auto out = new_states(B, s.n_shards());
            int64_t* p = out.mutable_data();
            py::gil_scoped_release release;
            s.search_many(ids.data(), off, B, p, anchored);
            return out;
          },
          py::arg("ids"), py::arg("offsets"), py::arg("anchored") = false,
          "States of many prefixes given CSR style (ids, offsets): one call for a batch of n-grams.")
      .def(
          "docs_many",
          [](const ShardSet& s, I64Array states, int64_t max_count) {
            const int64_t B = check_states(s, states);
            std::vector<int64_t> offsets, docs;
            {
              py::gil_scoped_release release;
              s.docs_many(states.data(), B, max_count, offsets, docs);
            }
            return py::make_tuple(to_numpy(std::move(offsets)), to_numpy(std::move(docs)));
          },
          py::arg("states"), py::arg("max_count"),
          "Distinct documents of many states, CSR (offsets, docs); states with more than max_count "
          "occurrences get an empty list.")
      .def(
          "next_tokens",
          [](const ShardSet& s, I64Array states, bool with_end) {
            const int64_t B = check_states(s, states);
            std::vector<int64_t> offsets, tokens;
            {
              py::gil_scoped_release release;
              s.next_tokens(states.data(), B, offsets, tokens, with_end);
            }
            return py::make_tuple(to_numpy(std::move(offsets)), to_numpy(std::move(tokens)));
          },
          py::arg("states"), py::arg("with_end") = false)
      .def(
          "children",
          [](const ShardSet& s, I64Array states, bool with_unique) {
            const int64_t B = check_states(s, states);
            gemkr::ChildrenResult res;
            {
              py::gil_scoped_release release;
              s.children(states.data(), B, res, with_unique);
            }
            const int64_t M = int64_t(res.tokens.size());
            auto st = to_numpy(std::move(res.states)).reshape({M, int64_t(s.n_shards()), int64_t(2)});
            py::object unique = py::none();
            if (with_unique) unique = to_numpy(std::move(res.unique));
            return py::make_tuple(to_numpy(std::move(res.offsets)), to_numpy(std::move(res.tokens)),
                                  to_numpy(std::move(res.counts)), st, unique);
          },
          py::arg("states"), py::arg("with_unique") = true);
}
