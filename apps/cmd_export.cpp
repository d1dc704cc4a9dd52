// cmd_export.cpp — `subq export --format hf --run DIR [--checkpoint PATH] --out DIR`: a trained model as a
// Hugging Face folder (config.json, model.safetensors, generation_config.json, tokenizer files) that
// transformers loads with the architecture's reference implementation (see models/hf_export.h).
#include "apps/cli.h"
#include "subq/core/log.h"
#include "subq/eval/run_assets.h"
#include "subq/models/hf_export.h"
#include "subq/train/checkpoint.h"

namespace subq::cli {

namespace {
void add_export_command(CLI::App& app, Context& ctx) {
  auto* cmd = app.add_subcommand("export", "export a trained model (Hugging Face folder)");
  struct Opts {
    std::string format = "hf", run, checkpoint, out, dtype = "fp32", tokenizer;
    bool force = false, no_tokenizer = false;
  };
  static Opts o;
  cmd->add_option("--format", o.format, "export format")->check(CLI::IsMember({"hf"}))->capture_default_str();
  cmd->add_option("--run", o.run, "run directory (its latest checkpoint unless --checkpoint)");
  cmd->add_option("--checkpoint", o.checkpoint, "a checkpoint directory (run/checkpoints/step-N)");
  cmd->add_option("-o,--out", o.out, "output directory (created; must not exist or be empty unless --force)")->required();
  cmd->add_option("--dtype", o.dtype, "weights dtype: fp32, bf16 or fp16")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}))
      ->capture_default_str();
  cmd->add_option("--tokenizer", o.tokenizer, "tokenizer.json to ship instead of the run's data.tokenizer");
  cmd->add_flag("--no-tokenizer", o.no_tokenizer, "write no tokenizer files (and no bos/eos ids)");
  cmd->add_flag("--force", o.force, "replace a non-empty --out directory");
  cmd->callback([&ctx] {
    ctx.action = [] {
      if (o.run.empty() && o.checkpoint.empty()) throw UsageError("subq export: give --run DIR (or --checkpoint PATH)");
      auto loaded = train::load_model(o.checkpoint.empty() ? o.run : o.checkpoint);
      const std::string run_dir = o.run.empty() ? eval::run_dir_of_checkpoint(loaded.checkpoint.path) : o.run;
      models::HfExportOptions eo;
      eo.out_dir = o.out;
      eo.dtype = o.dtype == "bf16" ? torch::kBFloat16 : o.dtype == "fp16" ? torch::kFloat16 : torch::kFloat32;
      eo.overwrite = o.force;
      std::optional<data::Tokenizer> tok;
      if (!o.no_tokenizer) {
        std::string path;
        tok = eval::load_run_tokenizer(loaded.config, run_dir, o.tokenizer, &path);
        eo.tokenizer_json_path = path;
      }
      auto files = models::export_hf(*loaded.model, tok ? &*tok : nullptr, eo);
      std::string list;
      for (const auto& f : files) list += (list.empty() ? "" : ", ") + f;
      log::info(str("exported ", loaded.config.model.arch, " from ", loaded.checkpoint.path, " (step ",
                    loaded.checkpoint.step, ") to ", o.out, ": ", list));
      return 0;
    };
  });
}

}  // namespace

SUBQ_REGISTER_COMMAND(65, add_export_command);

}  // namespace subq::cli
