// run_data.cpp — see run_data.h.
//
// Data parallel, synthetic: every rank gets the same seed and its rank/world, and takes the global examples
// r, r + w, ... of one stream (data/synthetic.h). Not a seed per rank: the trainer restores every rank
// from rank 0's saved cursor, and a cursor carries its seed, so per-rank seeds would all collapse into rank
// 0's stream after a resume (every rank training on the same examples).
#include "subq/train/run_data.h"

#include "subq/core/error.h"
#include "subq/eval/synthetic_eval.h"

namespace subq::train {

RunData open_run_data(const RunConfig& cfg, const torch::Device& device, bool with_train, bool with_eval,
                      int64_t rank, int64_t world) {
  SUBQ_CHECK(cfg.model.vocab_size > 0, "resolve model.vocab_size first");
  RunData d;
  if (cfg.data.task == "synthetic") {
    const auto& sc = cfg.data.synthetic;
    if (with_train) {
      data::SyntheticSourceOptions o;
      o.cfg = sc;
      o.batch_size = cfg.train.batch_size;
      o.seed = static_cast<uint64_t>(cfg.run.seed);
      o.rank = rank;
      o.world = world;
      o.device = device;
      d.synthetic = std::make_unique<data::SyntheticSource>(o);
      d.train = d.synthetic.get();
    }
    if (with_eval) {
      d.evaluator = eval::synthetic_evaluator(sc, cfg.eval.batch_size);
      std::string lens;
      for (int64_t l : sc.periodic_eval_lens()) lens += (lens.empty() ? "" : ", ") + std::to_string(l);
      d.eval_what = str("synthetic ", sc.task, " accuracy at length ", lens, " (", sc.eval_examples, " sequences each)");
    }
    return d;
  }
  d.lm = open_lm_data(cfg, device, with_train, with_eval, rank, world);
  d.train = d.lm.train.get();
  d.evaluator = d.lm.evaluator();
  if (d.lm.val) d.eval_what = str("held-out set ", cfg.data.val);
  return d;
}

}  // namespace subq::train
