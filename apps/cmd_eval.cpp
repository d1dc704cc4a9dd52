// cmd_eval.cpp — `subq eval --run DIR [--checkpoint PATH] [--set k=v ...]`: held-out loss, perplexity and
// bits per byte of a trained model, as JSON on stdout; for a data.task = synthetic run, accuracy per length
// (eval/synthetic_eval.h) as a table on stdout and as JSON in <run>/eval/synthetic-step-<N>.json
// (--set data.synthetic.eval_lens=[...] / eval_examples=N / eval_len_mode=range change what is scored).
//
// The model, data paths and eval sizes come from the checkpoint's own resolved config (what the run was
// trained with); --set overrides apply on top: --set eval.batches=0 scores the whole held-out set (a run's
// config usually caps it for the evaluations during training), --set data.val=DIR scores another set.
#include <cstdio>
#include <filesystem>

#include <torch/torch.h>

#include "apps/cli.h"
#include "subq/core/device.h"
#include "subq/core/log.h"
#include "subq/core/fs.h"
#include "subq/core/run_config.h"
#include "subq/core/run_dir.h"
#include "subq/data/synthetic.h"
#include "subq/eval/synthetic_eval.h"
#include "subq/models/model.h"
#include "subq/train/checkpoint.h"
#include "subq/train/lm_data.h"

namespace subq::cli {

namespace fs = std::filesystem;

namespace {

// data.task = synthetic: accuracy per length (table on stdout, JSON in <run>/eval/synthetic-step-<N>.json).
int eval_synthetic(const RunConfig& cfg, const train::CheckpointRef& ref) {
  if (cfg.run.threads > 0) at::set_num_threads(static_cast<int>(cfg.run.threads));
  const torch::Device device = resolve_device(cfg.run.device);
  const torch::ScalarType compute = resolve_dtype(cfg.run.dtype, device);
  const auto& sc = cfg.data.synthetic;
  const data::SyntheticTask task(sc);  // validates the (possibly overridden) task settings
  if (cfg.model.vocab_size < task.vocab_size())
    throw ConfigError(str("model.vocab_size = ", cfg.model.vocab_size, " of this checkpoint is smaller than task ",
                          task.name(), "'s vocabulary (", task.vocab_size(), " ids): data.synthetic.task was changed; "
                          "evaluate on the task the model was trained on"));
  log::info(str("evaluating ", ref.path, " (step ", ref.step, ") on synthetic ", task.name(), " at ",
                sc.eval_lens.size(), " lengths x ", sc.eval_examples, " sequences"));
  auto model = models::create_model(cfg.model);
  train::load_model_weights(*model, ref.path);
  model->to(device);
  eval::SyntheticEvalOptions eo;
  eo.batch_size = cfg.eval.batch_size;
  eo.compute = compute;
  eval::SyntheticEvalResult r = eval::evaluate_synthetic(*model, sc, sc.eval_lens, eo);
  nlohmann::json out = r.to_json();
  out["checkpoint"] = ref.path;
  out["step"] = ref.step;
  out["arch"] = cfg.model.arch;
  out["params"] = model->num_params();
  out["train_len"] = sc.train_len;
  out["train_min_len"] = sc.train_min_len;
  out["eval_examples"] = sc.eval_examples;
  out["eval_seed"] = sc.eval_seed;
  out["date"] = utc_now_iso();
  // <run>/checkpoints/step-N -> <run>/eval/synthetic-step-N.json
  const fs::path run_dir = fs::path(ref.path).parent_path().parent_path();
  const fs::path json_path = run_dir / "eval" / str("synthetic-step-", ref.step, ".json");
  std::error_code ec;
  fs::create_directories(json_path.parent_path(), ec);
  if (ec)
    throw RuntimeError(str("cannot create ", json_path.parent_path().string(), ": ", ec.message(),
                           "; check the run directory's permissions"));
  fsx::write_file_atomic(json_path.string(), out.dump(2) + "\n");
  std::printf("synthetic %s: %s, step %lld, %lld parameters, train_len %lld, eval_len_mode %s\n%s",
              task.name().c_str(), cfg.model.arch.c_str(), static_cast<long long>(ref.step),
              static_cast<long long>(model->num_params()), static_cast<long long>(sc.train_len),
              sc.eval_len_mode.c_str(), r.table().c_str());
  std::fflush(stdout);
  log::info(str("accuracy written to ", json_path.string()));
  return 0;
}

void add_eval_command(CLI::App& app, Context& ctx) {
  auto* cmd = app.add_subcommand(
      "eval", "evaluate a trained model: held-out loss (JSON to stdout), or accuracy per length for synthetic tasks");
  struct Opts {
    std::string run, checkpoint;
    std::vector<std::string> sets;
  };
  static Opts o;
  cmd->add_option("-r,--run", o.run, "run directory (its newest complete checkpoint is evaluated)");
  cmd->add_option("--checkpoint", o.checkpoint, "a checkpoint directory (runs/NAME/checkpoints/step-N)");
  cmd->add_option("--set", o.sets,
                  "override a key of the checkpoint's config: --set eval.batches=0 (whole set), --set data.val=DIR "
                  "(repeatable)")
      ->take_all();
  cmd->callback([&ctx] {
    ctx.action = []() -> int {
      if (o.run.empty() && o.checkpoint.empty())
        throw UsageError("subq eval: give --run DIR (its latest checkpoint) or --checkpoint DIR");
      const auto ref = train::resolve_checkpoint(o.checkpoint.empty() ? o.run : o.checkpoint);
      RunConfig cfg = train::checkpoint_config(ref.path, o.sets);
      log::set_level(cfg.run.log_level);
      if (cfg.data.task == "synthetic") return eval_synthetic(cfg, ref);
      if (cfg.data.val.empty())
        throw ConfigError("data.val is \"\" in this run's config: nothing to evaluate on; give one with --set data.val=DIR");
      if (cfg.run.threads > 0) at::set_num_threads(static_cast<int>(cfg.run.threads));
      const torch::Device device = resolve_device(cfg.run.device);
      const torch::ScalarType compute = resolve_dtype(cfg.run.dtype, device);
      log::info(str("evaluating ", ref.path, " (step ", ref.step, ") on ", cfg.data.val));
      auto model = models::create_model(cfg.model);
      train::load_model_weights(*model, ref.path);
      model->to(device);
      train::LmData data = train::open_lm_data(cfg, device, /*with_train=*/false, /*with_val=*/true);
      eval::LmEvalResult r = data.evaluator()(*model, compute);
      nlohmann::json out = r.to_json();
      out["checkpoint"] = ref.path;
      out["step"] = ref.step;
      out["arch"] = cfg.model.arch;
      out["params"] = model->num_params();
      out["val"] = cfg.data.val;
      std::printf("%s\n", out.dump(2).c_str());
      return 0;
    };
  });
}

}  // namespace

SUBQ_REGISTER_COMMAND(50, add_eval_command);

}  // namespace subq::cli
