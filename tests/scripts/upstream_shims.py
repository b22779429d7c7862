"""Stand-ins for upstream imports that are CUDA-only, shared by the scripts that run upstream's
Python code on the CPU (tests/scripts/make_trm_fixture.py, scripts/bench_hrm_upstream.py)."""
import torch


def flash_attn_func(q, k, v, causal=False, **_):
    """flash-attn's interface ([B, S, H, D] in and out), computed exactly in float32:
    softmax(q k^T / sqrt(D)) v, laid out [B, S, H, D] contiguous as flash-attn returns it."""
    dtype = q.dtype
    q, k, v = (t.transpose(1, 2).float() for t in (q, k, v))  # [B, H, S, D]
    scores = torch.matmul(q, k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    if causal:
        s_q, s_k = scores.shape[-2:]
        mask = torch.ones(s_q, s_k, dtype=torch.bool, device=scores.device).tril(s_k - s_q)
        scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), v)
    return out.transpose(1, 2).contiguous().to(dtype)


class AdamATan2(torch.optim.Optimizer):
    """The adam-atan2 package's update (its kernel is CUDA-only), as our C++ AdamATan2 does it:
    p *= 1 - lr*wd; m = lerp(m, g, 1-b1); v = lerp(v, g*g, 1-b2);
    p -= lr/(1-b1^t) * atan2(m, sqrt(v)/sqrt(1-b2^t))."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.99), weight_decay=1e-2):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, (b1, b2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["step"] += 1
                t = st["step"]
                p.mul_(1 - lr * wd)
                st["exp_avg"].lerp_(p.grad, 1 - b1)
                st["exp_avg_sq"].lerp_(p.grad.square(), 1 - b2)
                denom = st["exp_avg_sq"].sqrt() / ((1 - b2 ** t) ** 0.5)
                p.add_(torch.atan2(st["exp_avg"], denom), alpha=-lr / (1 - b1 ** t))
