// trainer.cpp — the training loop (see trainer.h for the contract, metrics.h for what is logged).
//
// Decisions:
//  * One host read-back per step: the step's loss and gradient norm are stacked and copied together,
//    which the NaN policy needs anyway; clipping then uses the host norm (coefficient clip/(norm+1e-6)
//    when the norm exceeds the clip, as torch.nn.utils.clip_grad_norm_ does).
//  * A skipped (non-finite) step still counts as a step: it consumed its data and the schedule moves
//    on, so a run with skips ends at train.steps like any other. Its loss is recorded as NaN.
//  * Exact resume: the checkpoint stores everything that feeds the next step (weights, AdamW moments and
//    step counts, the data cursor, the CPU/CUDA generator states, the step and token counters, the
//    consecutive-skip count). Learning rates are a pure function of the step. Eval and checkpointing
//    consume no random numbers, so they may happen at different steps in the two runs.
//  * Timing for tokens/s covers the step (data wait included), not evals or checkpoints; the host
//    read-back each step synchronises the GPU, so step times are real.
//  * Data parallel (a distributed dist::Context): the single-process code stays as it was, and the
//    differences sit behind `dp` (dist::DataParallel: gradient averaging, the optimizer, ZeRO-1) and
//    `main` (rank 0: the only rank that touches the run directory). Rank 0 decides the resume plan
//    (checkpoint, or the error every rank then throws) and loads the checkpoint; weights, optimizer state
//    and trainer state reach the other ranks through collectives, so only rank 0 needs the run directory.
//    The stop request is a vote carried by the step's reduction, so every rank stops at the same step.
//    Each rank draws its random numbers from its own stream (rank 0's is the single-process one; rank
//    r > 0 reseeds after the model is built); checkpoints keep every rank's RNG state and restore them
//    when resumed on as many ranks.
#include "subq/train/trainer.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>

#include <torch/torch.h>

#include "subq/core/config.h"
#include "subq/core/device.h"
#include "subq/core/error.h"
#include "subq/core/log.h"
#include "subq/core/progress.h"
#include "subq/core/safetensors.h"
#include "subq/dist/data_parallel.h"
#include "subq/models/model.h"
#include "subq/train/checkpoint.h"
#include "subq/train/metrics.h"
#include "subq/train/optimizer.h"
#include "subq/train/schedule.h"

namespace subq::train {

namespace {

std::atomic<bool> g_stop{false};

using clock_type = std::chrono::steady_clock;
double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

std::string human_count(double v) {
  const char* units[] = {"", "k", "M", "G", "T"};
  int u = 0;
  while (std::fabs(v) >= 1000.0 && u < 4) {
    v /= 1000.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f%s" : "%.1f%s", v, units[u]);
  return buf;
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string sci(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2e", v);
  return buf;
}

nlohmann::json number_or_null(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); }

// Sums an evaluation over the ranks (each scored its share of the held-out batches).
eval::LmEvalResult reduce_eval(dist::Context& ctx, const eval::LmEvalResult& r, const torch::Device& device) {
  auto t = torch::tensor({r.nats, r.text_nats, static_cast<double>(r.tokens), static_cast<double>(r.bytes),
                          static_cast<double>(r.batches)},
                         torch::TensorOptions().dtype(torch::kFloat64))
               .to(device);
  ctx.comm().allreduce(t, dist::ReduceOp::sum)->wait();
  auto h = t.to(torch::kCPU);
  eval::LmEvalSums sums;
  sums.nats = h[0].item<double>();
  sums.text_nats = h[1].item<double>();
  sums.tokens = static_cast<int64_t>(h[2].item<double>());
  sums.bytes = static_cast<int64_t>(h[3].item<double>());
  sums.batches = static_cast<int64_t>(h[4].item<double>());
  return sums.result(sums.bytes > 0);
}

}  // namespace

void request_stop() { g_stop.store(true); }
bool stop_requested() { return g_stop.load(); }

TrainResult train(const RunConfig& cfg, const RunDir& run_dir, const TrainData& data, const TrainHooks& hooks,
                  dist::Context* dist_ctx) {
  if (!data.train) throw InternalError("train() needs a training data source");
  g_stop.store(false);
  const auto launch_start = clock_type::now();
  const auto& tc = cfg.train;
  const bool distributed = dist_ctx && dist_ctx->distributed();
  const bool main = !distributed || dist_ctx->is_main();
  const int64_t world = distributed ? dist_ctx->world() : 1;

  if (cfg.data.seq_len > cfg.model.max_seq_len)
    throw ConfigError(str("data.seq_len = ", cfg.data.seq_len, " exceeds model.max_seq_len = ", cfg.model.max_seq_len,
                          "; raise model.max_seq_len or lower data.seq_len"));
  if (cfg.run.threads > 0) at::set_num_threads(static_cast<int>(cfg.run.threads));
  const torch::Device device = distributed ? dist_ctx->device() : resolve_device(cfg.run.device);
  const torch::ScalarType compute = resolve_dtype(cfg.run.dtype, device);

  // ---- resume or start fresh (rank 0 looks at the run directory and decides for everybody)
  std::optional<CheckpointRef> existing;
  nlohmann::json st;
  std::string plan_error;
  if (main) {
    clean_incomplete_checkpoints(run_dir.path);
    existing = latest_checkpoint(run_dir.path);
    try {
      if (existing && cfg.run.resume == "never")
        throw InputError(str("run directory ", run_dir.path, " already has checkpoints (latest: step ", existing->step,
                             ") and run.resume = never; use --set run.resume=auto to continue it, or start a new run ",
                             "with a different run.name (or delete the directory)"));
      if (existing) {
        st = read_trainer_state(existing->path);
        const RunConfig saved = checkpoint_config(existing->path);
        if (config::to_yaml(saved.model) != config::to_yaml(cfg.model))
          throw InputError(str("the model config differs from the one checkpoint ", existing->path,
                               " was trained with; resume with the same model: section, or start a new run.name"));
      }
    } catch (const InputError& e) {
      if (!distributed) throw;
      plan_error = e.what();
    }
  }
  if (distributed) {
    plan_error = dist_ctx->broadcast_string("resume plan", plan_error);
    if (!plan_error.empty()) throw InputError(plan_error);
  }

  torch::manual_seed(static_cast<uint64_t>(cfg.run.seed));
  auto model = models::create_model(cfg.model);
  model->to(device);
  model->train();
  std::vector<std::pair<std::string, torch::Tensor>> named;
  for (const auto& p : model->named_parameters()) named.emplace_back(p.key(), p.value());
  std::unique_ptr<AdamW> own_opt;
  std::unique_ptr<dist::DataParallel> dp;
  if (distributed) dp = std::make_unique<dist::DataParallel>(*dist_ctx, named, cfg.optim);
  else own_opt = std::make_unique<AdamW>(named, cfg.optim);
  AdamW& opt = dp ? dp->optimizer() : *own_opt;
  const auto& params = opt.params();
  if (distributed && dist_ctx->rank() > 0)  // rank 0 keeps the single-process stream; the others get their own
    torch::manual_seed(static_cast<uint64_t>(cfg.run.seed) ^ (0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(dist_ctx->rank())));

  TrainResult result;
  result.num_params = model->num_params();
  int64_t step = 0, tokens = 0, bad_in_a_row = 0;
  double prior_elapsed = 0;
  if (dp) {
    TensorMap opt_state;
    if (main && existing) {
      load_model_weights(*model, existing->path);
      opt_state = AdamW::read_state((std::filesystem::path(existing->path) / "optimizer.safetensors").string());
    }
    dp->broadcast_module(*model);
    const bool resuming = dist_ctx->broadcast_string("resuming", existing ? "1" : "0") == "1";
    if (resuming) {
      dp->load_optimizer_state(main ? &opt_state : nullptr);
      st = nlohmann::json::parse(dist_ctx->broadcast_string("trainer state", main ? st.dump() : ""));
      if (!main) existing = CheckpointRef{"rank 0's checkpoint", st.at("step").get<int64_t>()};
    }
  } else if (existing) {
    load_model_weights(*model, existing->path);
    opt.load((std::filesystem::path(existing->path) / "optimizer.safetensors").string());
  }
  if (existing) {
    step = st.at("step").get<int64_t>();
    tokens = st.value("tokens", int64_t{0});
    bad_in_a_row = st.value("bad_steps_in_a_row", int64_t{0});
    prior_elapsed = st.value("elapsed_s", 0.0);
    if (st.contains("data")) data.train->restore(st["data"]);
    const auto& rng_ranks = st.contains("rng_ranks") ? st["rng_ranks"] : nlohmann::json();
    if (distributed && rng_ranks.is_array() && static_cast<int64_t>(rng_ranks.size()) == world) {
      restore_rng_state(rng_ranks[static_cast<size_t>(dist_ctx->rank())]);
    } else if (st.contains("rng")) {
      restore_rng_state(st["rng"]);
      if (distributed && dist_ctx->rank() > 0)  // saved on another number of ranks: a fresh stream per rank
        torch::manual_seed(static_cast<uint64_t>(cfg.run.seed) ^ static_cast<uint64_t>(step) ^
                           (0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(dist_ctx->rank())));
    }
    const int64_t moved = main ? truncate_metrics_after(run_dir.metrics_path(), step,
                                                        run_dir.path + "/metrics.superseded.jsonl")
                               : 0;
    result.start_step = step;
    log::info(str("resuming from ", existing->path, " (step ", step, ", ", human_count(static_cast<double>(tokens)),
                  " tokens)", moved ? str("; ", moved, " later metrics lines moved to metrics.superseded.jsonl") : ""));
  }
  result.step = step;
  result.tokens = tokens;

  const int64_t total = tc.steps;
  const int64_t seq_len = cfg.data.seq_len;
  const double flops_tok = model->flops_per_token(seq_len);
  const std::string dev_name = device_name(device);
  const auto peak = device.is_cuda() ? peak_flops(dev_name, compute) : std::nullopt;
  if (device.is_cuda() && !peak) log::warn(str("no peak-FLOPs figure for GPU '", dev_name, "': mfu is logged as null"));
  log::info(str("model ", cfg.model.arch, ": ", human_count(static_cast<double>(result.num_params)), " parameters (",
                result.num_params, "), ", human_count(flops_tok), " FLOPs/token at seq_len ", seq_len, "; device ",
                dev_name, ", compute ", c10::toString(compute), ", AdamW ", opt.fused() ? "fused" : "foreach", " (",
                opt.num_decay(), " decayed / ", opt.num_no_decay(), " not)"));
  const int64_t global_batch = tc.batch_size * tc.grad_accum * world;
  if (distributed)
    log::info(str("batch: ", tc.batch_size, " sequences per micro-batch per rank x ", tc.grad_accum, " accumulated x ",
                  world, " ranks = global batch ", global_batch, " sequences (", global_batch * seq_len,
                  " tokens) per optimizer step"));

  auto run_eval = [&]() {
    auto r = data.evaluate(*model, compute);
    model->train();
    if (distributed) {
      // sums over ranks; ratio metrics a source computes itself (synthetic accuracy: every rank scores
      // the same sets, run_data.h) are the local rank's
      auto reduced = reduce_eval(*dist_ctx, r, device);
      reduced.extra = r.extra;
      reduced.summary = r.summary;
      r = reduced;
    }
    return r;
  };

  auto trainer_state = [&](int64_t at_step) {
    nlohmann::json st;
    st["step"] = at_step;
    st["tokens"] = tokens;
    st["data"] = data.train->state();
    st["rng"] = capture_rng_state();
    st["config"] = config::to_yaml(cfg);
    st["bad_steps_in_a_row"] = bad_in_a_row;
    st["elapsed_s"] = prior_elapsed + seconds_since(launch_start);
    st["num_params"] = result.num_params;
    return st;
  };
  auto checkpoint = [&](int64_t at_step) {
    const auto t0 = clock_type::now();
    if (!distributed) {
      result.last_checkpoint = save_checkpoint(run_dir.path, at_step, *model, &opt, trainer_state(at_step), tc.keep_last);
    } else {  // collectives first (every rank), then rank 0 writes
      TensorMap full = dp->gather_optimizer_state();
      auto rngs = dist_ctx->all_gather_string("rng states", capture_rng_state().dump());
      if (main) {
        auto ts = trainer_state(at_step);
        ts["world"] = world;
        ts["rng_ranks"] = nlohmann::json::array();
        for (const auto& r : rngs) ts["rng_ranks"].push_back(nlohmann::json::parse(r));
        result.last_checkpoint = save_checkpoint(run_dir.path, at_step, *model, &opt, ts, tc.keep_last, &full);
      }
    }
    if (main) log::info(str("checkpoint ", result.last_checkpoint, " (", fixed(seconds_since(t0), 1), "s)"));
  };

  std::optional<MetricsWriter> metrics;
  std::optional<Progress> progress;
  if (main) {
    metrics.emplace(run_dir.metrics_path());
    // counts the steps of this launch (so its rate and ETA are right after a resume)
    progress.emplace(step > 0 ? str("train (resumed at step ", step, ")") : std::string("train"),
                     std::max<int64_t>(total - step, 0), "steps");
  }
  double iv_loss = 0, iv_time = 0, iv_data = 0;
  int64_t iv_steps = 0, iv_tokens = 0;
  double last_tok_s = 0;
  const int64_t start_tokens = tokens;
  if (step >= total)
    log::info(str("run is already at step ", step, " >= train.steps = ", total, "; raise train.steps to train further"));

  while (step < total) {
    const int64_t s = step + 1;
    const auto step_start = clock_type::now();
    const double lr = lr_at(s, cfg.schedule, cfg.optim.lr, total);
    double data_s = 0;
    int64_t step_tokens = 0;
    torch::Tensor loss_sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
    for (int64_t micro = 0; micro < tc.grad_accum; ++micro) {
      const auto d0 = clock_type::now();
      data::Batch b = data.train->next();
      auto inputs = b.inputs.to(device, /*non_blocking=*/true);
      auto targets = b.targets.to(device, /*non_blocking=*/true);
      auto doc = b.doc_start.defined() ? b.doc_start.to(device, true) : torch::Tensor();
      data_s += seconds_since(d0);
      step_tokens += b.tokens();
      torch::Tensor loss;
      {
        AutocastGuard ac(device, compute);
        auto logits = model->forward(inputs, doc);
        loss = torch::nn::functional::cross_entropy(
            logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32), targets.reshape({-1}),
            torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
      }
      if (dp) dp->set_sync(micro + 1 == tc.grad_accum);  // reduce only after the last micro-batch
      (loss / static_cast<double>(tc.grad_accum)).backward();
      loss_sum += loss.detach();
    }
    double loss_v = 0, gn_v = 0;
    bool voted_stop = false;
    if (dp) {
      const bool vote = stop_requested() || (hooks.should_stop && hooks.should_stop(s));
      const auto r = dp->finish(loss_sum / static_cast<double>(tc.grad_accum), vote);
      loss_v = r.loss;
      gn_v = r.grad_norm;
      voted_stop = r.stop;
    } else {
      auto gn_t = clip_grad_norm(params, 0.0);
      auto host =
          torch::stack({loss_sum / static_cast<double>(tc.grad_accum), gn_t.to(torch::kFloat32)}).to(torch::kCPU);
      loss_v = host[0].item<double>();
      gn_v = host[1].item<double>();
    }
    const bool finite = std::isfinite(loss_v) && std::isfinite(gn_v);
    if (!finite) {
      const std::string what = str("non-finite ", std::isfinite(loss_v) ? "gradient norm" : "loss", " at step ", s,
                                   " (loss ", loss_v, ", grad_norm ", gn_v, ", lr ", lr, ")");
      const std::string fix = "lower optim.lr, raise schedule.warmup_steps, keep optim.grad_clip > 0, or try "
                              "run.dtype=fp32; training resumes from the last checkpoint when re-run";
      if (dp) dp->zero_grad();
      else opt.zero_grad();
      if (tc.nan_policy == "stop")
        throw RuntimeError(str(what, " and train.nan_policy = stop; ", fix));
      ++bad_in_a_row;
      ++result.skipped_steps;
      if (bad_in_a_row >= tc.max_bad_steps)
        throw RuntimeError(str(what, ": ", bad_in_a_row, " non-finite steps in a row (train.max_bad_steps = ",
                               tc.max_bad_steps, "); ", fix));
      log::warn(str(what, ": step skipped (train.nan_policy = skip, ", bad_in_a_row, " in a row)"));
    } else {
      bad_in_a_row = 0;
      const double coef = cfg.optim.grad_clip / (gn_v + 1e-6);
      if (dp) {
        if (cfg.optim.grad_clip > 0 && gn_v > cfg.optim.grad_clip) dp->scale_grads(coef);
        dp->step(lr);
        dp->zero_grad();
      } else {
        if (cfg.optim.grad_clip > 0 && gn_v > cfg.optim.grad_clip) scale_grads(params, coef);
        opt.step(lr);
        opt.zero_grad();
      }
    }
    step_tokens *= world;  // every rank trained on as many tokens
    step = s;
    tokens += step_tokens;
    result.losses.push_back(finite ? loss_v : std::numeric_limits<double>::quiet_NaN());
    const double step_time = seconds_since(step_start);
    if (hooks.on_step)
      hooks.on_step({{"step", s}, {"loss", number_or_null(loss_v)}, {"lr", lr}, {"grad_norm", number_or_null(gn_v)},
                     {"skipped", !finite}});

    if (finite) {
      iv_loss += loss_v;
      ++iv_steps;
    }
    iv_time += step_time;
    iv_data += data_s;
    iv_tokens += step_tokens;
    if (s % tc.log_every == 0 || s == total) {
      last_tok_s = iv_time > 0 ? static_cast<double>(iv_tokens) / iv_time : 0.0;
      const double loss_avg = iv_steps ? iv_loss / static_cast<double>(iv_steps) : std::numeric_limits<double>::quiet_NaN();
      double mem = peak_memory_gib(device), data_wait = iv_data;
      if (distributed) {  // the worst rank's memory and data wait
        auto t = torch::tensor({mem, data_wait}, torch::TensorOptions().dtype(torch::kFloat64)).to(device);
        dist_ctx->comm().allreduce(t, dist::ReduceOp::max)->wait();
        auto h = t.to(torch::kCPU);
        mem = h[0].item<double>();
        data_wait = h[1].item<double>();
      }
      if (main) {
        nlohmann::json rec;
        rec["step"] = s;
        rec["loss"] = number_or_null(loss_avg);
        rec["lr"] = lr;
        rec["grad_norm"] = number_or_null(gn_v);
        rec["tokens"] = tokens;
        rec["tokens_per_s"] = last_tok_s;
        rec["mfu"] = peak ? nlohmann::json(flops_tok * last_tok_s / (*peak * static_cast<double>(world)))
                          : nlohmann::json(nullptr);
        rec["mem_gib"] = mem;
        rec["elapsed_s"] = prior_elapsed + seconds_since(launch_start);
        rec["data_s"] = data_wait;
        rec["world"] = world;
        rec["global_batch"] = global_batch;
        metrics->write(rec);
        log::debug(rec.dump());
        progress->set_postfix(str("loss ", fixed(loss_avg, 4), " | lr ", sci(lr), " | ", human_count(last_tok_s), " tok/s"));
        log::flush();  // keep train.log current (the file sink otherwise flushes on warnings only)
      }
      iv_loss = iv_time = iv_data = 0;
      iv_steps = iv_tokens = 0;
    }
    if (progress) progress->advance(1);

    const bool stop = dp ? voted_stop : stop_requested() || (hooks.should_stop && hooks.should_stop(s));
    if (data.evaluate && ((cfg.eval.every > 0 && s % cfg.eval.every == 0) || s == total)) {
      auto r = run_eval();
      nlohmann::json rec = r.to_json();
      rec["step"] = s;
      if (metrics) metrics->write(rec);
      if (main)
        log::info(str("eval @ step ", s, ": loss ", fixed(r.loss, 4), ", ppl ", fixed(r.ppl, 2),
                      r.bpb ? str(", bpb ", fixed(*r.bpb, 4)) : std::string(), " (", r.tokens, " tokens)",
                      r.summary.empty() ? std::string() : "; " + r.summary));
      result.last_eval = r;
    }
    if ((tc.ckpt_every > 0 && s % tc.ckpt_every == 0) || s == total || stop) checkpoint(s);
    result.step = step;
    result.tokens = tokens;
    if (stop && s < total) {
      if (main)
        log::info(str("stopped at step ", s, " on request; checkpoint ", result.last_checkpoint,
                    " saved: run the same command again to resume"));
      break;
    }
  }
  if (progress) progress->finish();
  result.finished = step >= total;
  const double elapsed = seconds_since(launch_start);
  std::string summary = str(result.finished ? "training done" : "training stopped", ": step ", step, "/", total, ", ",
                            human_count(static_cast<double>(tokens)), " tokens, ", Progress::format_duration(elapsed),
                            " this launch (", human_count(static_cast<double>(tokens - start_tokens) / std::max(elapsed, 1e-9)),
                            " tok/s)");
  if (!result.losses.empty()) summary += str(", final loss ", fixed(result.losses.back(), 4));
  if (result.last_eval)
    summary += str(", eval loss ", fixed(result.last_eval->loss, 4),
                   result.last_eval->bpb ? str(" (bpb ", fixed(*result.last_eval->bpb, 4), ")") : std::string());
  if (result.skipped_steps) summary += str(", ", result.skipped_steps, " skipped steps");
  if (!result.last_checkpoint.empty()) summary += str("; checkpoint ", result.last_checkpoint);
  if (main) log::info(summary);
  return result;
}

}  // namespace subq::train
