// cmd_generate.cpp — `subq generate --run DIR [--checkpoint PATH] --prompt TEXT|--prompt-file F ...`:
// text from a trained model. Loads the checkpoint with the config it was trained with, the run's
// tokenizer (data.tokenizer), prefills the prompt through the decode cache and samples token by token.
// stdout gets the prompt followed by the generated text (streamed as it comes for one sample; with
// several, each after a "--- sample i/N ---" line); timings go to the log (stderr).
#include <cstdio>

#include "apps/cli.h"
#include "subq/core/device.h"
#include "subq/core/fs.h"
#include "subq/core/log.h"
#include "subq/eval/generate.h"
#include "subq/eval/run_assets.h"
#include "subq/train/checkpoint.h"

namespace subq::cli {

namespace {

// Bytes of `s` that form complete UTF-8 sequences at its end are printable now; an incomplete trailing
// sequence (a token that ends mid-character) waits for the next token.
size_t complete_utf8_prefix(const std::string& s) {
  size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    unsigned char c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead byte
    size_t len = (c & 0x80) == 0 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
    return len > back ? n - back : n;
  }
  return n;
}

std::string format_rate(double tokens, double seconds) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f tok/s", seconds > 0 ? tokens / seconds : 0.0);
  return buf;
}

void add_generate_command(CLI::App& app, Context& ctx) {
  auto* cmd = app.add_subcommand("generate", "generate text from a trained model (KV-cache / recurrent-state decoding)");
  struct Opts {
    std::string run, checkpoint, prompt, prompt_file, device, tokenizer;
    int64_t max_new_tokens = 128, top_k = 0, num_samples = 1;
    double temperature = 0.8, top_p = 0.95;
    uint64_t seed = 0;
    bool prompt_given = false;
  };
  static Opts o;
  cmd->add_option("--run", o.run, "run directory (its latest checkpoint unless --checkpoint)");
  cmd->add_option("--checkpoint", o.checkpoint, "a checkpoint directory (run/checkpoints/step-N)");
  auto* p = cmd->add_option("--prompt", o.prompt, "prompt text");
  auto* pf = cmd->add_option("--prompt-file", o.prompt_file, "read the prompt from this file");
  p->excludes(pf);
  cmd->add_option("--max-new-tokens", o.max_new_tokens, "tokens to generate at most")->capture_default_str();
  cmd->add_option("--temperature", o.temperature, "sampling temperature; 0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", o.top_k, "sample among the k most likely tokens; 0 = off")->capture_default_str();
  cmd->add_option("--top-p", o.top_p, "nucleus sampling mass; 1 = off")->capture_default_str();
  cmd->add_option("--seed", o.seed, "sampling seed")->capture_default_str();
  cmd->add_option("--num-samples", o.num_samples, "independent samples (decoded as one batch)")->capture_default_str();
  cmd->add_option("--device", o.device, "device (cpu, cuda, cuda:N); default: the run's run.device");
  cmd->add_option("--tokenizer", o.tokenizer, "tokenizer.json to use instead of the run's data.tokenizer");
  cmd->callback([&ctx, p, pf] {
    o.prompt_given = p->count() > 0 || pf->count() > 0;
    ctx.action = [] {
      if (o.run.empty() && o.checkpoint.empty()) throw UsageError("subq generate: give --run DIR (or --checkpoint PATH)");
      if (!o.prompt_given) throw UsageError("subq generate: give --prompt TEXT or --prompt-file FILE");
      std::string prompt = o.prompt;
      if (!o.prompt_file.empty()) prompt = fsx::read_file(o.prompt_file, "prompt file");

      auto loaded = train::load_model(o.checkpoint.empty() ? o.run : o.checkpoint);
      const std::string run_dir = o.run.empty() ? eval::run_dir_of_checkpoint(loaded.checkpoint.path) : o.run;
      std::string tok_path;
      data::Tokenizer tok = eval::load_run_tokenizer(loaded.config, run_dir, o.tokenizer, &tok_path);

      const torch::Device device = resolve_device(o.device.empty() ? loaded.config.run.device : o.device);
      loaded.model->to(device);
      eval::GenerateOptions go;
      go.sampling = {o.temperature, o.top_k, o.top_p};
      go.max_new_tokens = o.max_new_tokens;
      go.num_samples = o.num_samples;
      go.seed = o.seed;
      if (auto e = tok.eos_id()) go.eos_id = *e;
      go.compute = resolve_dtype(loaded.config.run.dtype, device);
      go.vocab_limit = std::min(tok.vocab_size(), loaded.config.model.vocab_size);
      go.suppress_tokens = eval::undecodable_ids(tok, go.vocab_limit);

      std::vector<int32_t> ids32 = tok.encode(prompt);
      std::vector<int64_t> ids(ids32.begin(), ids32.end());
      log::info(str("checkpoint ", loaded.checkpoint.path, " (step ", loaded.checkpoint.step, "), tokenizer ", tok_path,
                    ", device ", device.str(), ", prompt ", ids.size(), " tokens"));

      // One sample: stream the text as tokens arrive. Several: print each when done.
      const bool stream = o.num_samples == 1;
      std::string pending;
      eval::TokenCallback on_token;
      if (stream) {
        std::fwrite(prompt.data(), 1, prompt.size(), stdout);
        std::fflush(stdout);
        on_token = [&](int64_t, int64_t t) {
          pending += tok.decode_bytes(std::vector<int32_t>{static_cast<int32_t>(t)});
          size_t n = complete_utf8_prefix(pending);
          if (n == 0) return;
          std::fwrite(pending.data(), 1, n, stdout);
          std::fflush(stdout);
          pending.erase(0, n);
        };
      }
      eval::GenerateResult r = eval::generate(*loaded.model, ids, go, on_token);
      if (stream) {
        std::fwrite(pending.data(), 1, pending.size(), stdout);
        std::fputs("\n", stdout);
      } else {
        for (int64_t i = 0; i < o.num_samples; ++i) {
          std::vector<int32_t> out(r.tokens[i].begin(), r.tokens[i].end());
          std::string text = prompt + tok.decode(out);
          std::printf("--- sample %lld/%lld ---\n%s\n", static_cast<long long>(i + 1),
                      static_cast<long long>(o.num_samples), text.c_str());
        }
      }
      std::fflush(stdout);
      const double decoded = static_cast<double>(r.decode_steps * o.num_samples);
      int64_t eos_stops = 0;
      for (bool b : r.stopped_at_eos) eos_stops += b ? 1 : 0;
      log::info(str("prefill ", r.prompt_tokens, " tokens x ", o.num_samples, " in ", r.prefill_s, "s (",
                    format_rate(static_cast<double>(r.prompt_tokens * o.num_samples), r.prefill_s), "); decode ",
                    r.decode_steps, " steps x ", o.num_samples, " in ", r.decode_s, "s (",
                    format_rate(decoded, r.decode_s), ", ", format_rate(static_cast<double>(r.decode_steps), r.decode_s),
                    " per sequence); ", r.new_tokens(), " new tokens, ", eos_stops, "/", o.num_samples,
                    " stopped at end-of-text"));
      return 0;
    };
  });
}

}  // namespace

SUBQ_REGISTER_COMMAND(60, add_generate_command);

}  // namespace subq::cli
