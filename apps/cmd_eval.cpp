// cmd_eval.cpp — `subq eval --run DIR [--checkpoint PATH] [--set k=v ...]`: held-out loss, perplexity and
// bits per byte of a trained model, as JSON on stdout.
//
// The model, data paths and eval sizes come from the checkpoint's own resolved config (what the run was
// trained with); --set overrides apply on top: --set eval.batches=0 scores the whole held-out set (a run's
// config usually caps it for the evaluations during training), --set data.val=DIR scores another set.
#include <cstdio>

#include <torch/torch.h>

#include "apps/cli.h"
#include "subq/core/device.h"
#include "subq/core/log.h"
#include "subq/core/run_config.h"
#include "subq/models/model.h"
#include "subq/train/checkpoint.h"
#include "subq/train/lm_data.h"

namespace subq::cli {

namespace {
void add_eval_command(CLI::App& app, Context& ctx) {
  auto* cmd = app.add_subcommand("eval", "evaluate a trained model on held-out data (JSON to stdout)");
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
