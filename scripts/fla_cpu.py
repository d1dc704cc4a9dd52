"""fla_cpu.py — run flash-linear-attention's GatedDeltaNet model on the CPU, for scripts/check_hf_export.py.

fla 0.6.0 builds and loads GatedDeltaNetForCausalLM anywhere, but its forward calls Triton kernels that
need a GPU driver (on a CPU-only machine Triton reports "0 active drivers"). patch_gated_deltanet()
replaces exactly those kernel calls with PyTorch code, so that fla's own module graph (its projections,
reshapes, residual order, norms, MLP, gate and head wiring, parameter use) runs on the CPU:

  * the gated delta rule (chunk and fused_recurrent modes of fla.layers.gated_deltanet) -> fla's own
    reference op fla.ops.gated_delta_rule.naive.naive_recurrent_gated_delta_rule, fed with fla's own
    naive_gdn_gate (g = -exp(A_log) softplus(a + dt_bias)), the beta sigmoid (x2 with allow_neg_eigval)
    and the L2 normalisation (x / sqrt(sum x^2 + 1e-6), as fla's l2norm kernel) that the kernel would
    apply in-kernel;
  * ShortConvolution -> torch's nn.Conv1d forward of the same module (fla builds it as an nn.Conv1d with
    padding K-1; the first T outputs are the causal conv) + SiLU, with the fused q/k/v conv path off;
  * FusedRMSNormGated -> RMSNorm(x) * weight * act(gate) in fp32 (what its Triton kernel computes);
  * fla.modules.mlp.swiglu -> silu(gate) * up in fp32.

Only the no-cache, no-padding, no-varlen forward (and its autograd backward) is supported; anything
else raises. This is a test harness, not a way to serve models.
"""
import torch
import torch.nn.functional as F


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    return xf * torch.rsqrt((xf * xf).sum(-1, keepdim=True) + 1e-6)


def patch_gated_deltanet() -> None:
    import fla.layers.gated_deltanet as gdn_layer
    import fla.modules.mlp as fla_mlp
    from fla.modules import FusedRMSNormGated, ShortConvolution
    from fla.ops.gated_delta_rule.gate import naive_gdn_gate
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

    def gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                         use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=False, allow_neg_eigval=False,
                         state_v_first=False, cu_seqlens=None, use_gate_in_kernel=False, A_log=None, dt_bias=None,
                         **kwargs):
        if cu_seqlens is not None or initial_state is not None:
            raise NotImplementedError("fla_cpu: varlen / initial states are not supported")
        if q.shape[2] != v.shape[2]:
            raise NotImplementedError("fla_cpu: grouped value heads are not supported")
        if use_qk_l2norm_in_kernel:
            q, k = _l2norm(q), _l2norm(k)
        if use_gate_in_kernel:
            g = naive_gdn_gate(g, A_log, dt_bias)
        if use_beta_sigmoid_in_kernel:
            beta = beta.float().sigmoid() * (2.0 if allow_neg_eigval else 1.0)
        o, state = naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale=scale,
                                                    output_final_state=output_final_state)
        if state is not None and state_v_first:
            state = state.transpose(-1, -2)
        return o.to(v.dtype), state

    def short_conv_forward(self, x, residual=None, mask=None, cache=None, output_final_state=False,
                           cu_seqlens=None, **kwargs):
        if residual is not None or mask is not None or cache is not None or cu_seqlens is not None:
            raise NotImplementedError("fla_cpu: ShortConvolution supports the plain forward only")
        T = x.shape[1]
        y = torch.nn.Conv1d.forward(self, x.transpose(1, 2))[..., :T].transpose(1, 2)
        if self.activation in ("silu", "swish"):
            y = F.silu(y)
        return y, None

    def gated_norm_forward(self, x, g, residual=None, prenorm=False, residual_in_fp32=False):
        if residual is not None or prenorm:
            raise NotImplementedError("fla_cpu: FusedRMSNormGated supports the plain forward only")
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.float()
        gf = g.float()
        y = y * (F.silu(gf) if self.activation in ("swish", "silu") else torch.sigmoid(gf))
        return y.to(x.dtype)

    gdn_layer.chunk_gated_delta_rule = gated_delta_rule
    gdn_layer.fused_recurrent_gated_delta_rule = gated_delta_rule
    gdn_layer.GatedDeltaNet._use_fused_qkv_conv = lambda self, *args, **kwargs: False
    ShortConvolution.forward = short_conv_forward
    FusedRMSNormGated.forward = gated_norm_forward
    fla_mlp.swiglu = lambda gate, up: (F.silu(gate.float()) * up.float()).to(gate.dtype)
