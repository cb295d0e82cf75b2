"""Point-level building blocks of the ∞-Diff network (Sec. 4.2, App. A).

* :func:`timestep_embedding` / :class:`TimeEmbedding`: sinusoidal embedding of the diffusion step t
  followed by an MLP (Nichol & Dhariwal 2021), shared by every conditioned layer.
* :func:`layer_norm`: LayerNorm over channels without an affine, by the faster group-norm kernel.
* :class:`ModulatedLayerNorm`: LayerNorm over channels whose scale and shift come from t (App. A:
  "modulated layer normalisation is used to normalise and condition on the diffusion time step").
* :class:`SparseDepthwiseConv`: the sparse convolution operator of Eq. 20 with a learnt k x k
  depthwise kernel defined at the training resolution and resized (integral kept) at any other R.
* :class:`SparseRegularConv`, :class:`SparseNonlinearKernel`: the spatial operators of the Table 2
  ablations (``regular_conv``: full C x C kernel; ``nonlinear_kernel``: conv -> GELU -> conv).
* :class:`PointMLP`: the "three layer MLP" (in -> hidden -> out units, C -> mlp_ratio*C -> C, GELU),
  as in ConvNeXt and the official code.
* :class:`SparseResBlock`: the sparse residual convolution operator block,
  ``v + K(LN_t(v))`` then ``v + MLP(LN_t(v))``.

All point tensors are ``[B, N, C]``; per-point operations never mix samples of a batch, so outputs do
not depend on batch composition.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infdiff import fused_norm
from infdiff import layer_norm as layer_norm_kernel
from infdiff import point_mlp
from infdiff.sparse import SparseGeometry, reads_planes, resize_kernel, sparse_conv, sparse_depthwise_conv

__all__ = ["timestep_embedding", "TimeEmbedding", "layer_norm", "ModulatedLayerNorm", "SparseDepthwiseConv",
           "SparseRegularConv", "SparseNonlinearKernel", "PointMLP", "SparseResBlock", "chunked", "pointwise",
           "latent_scale"]

# Points per slice for pointwise layers when no gradient is needed (sampling on the full grid).
POINT_CHUNK = 2 ** 14


def chunked(B: int, N: int) -> bool:
    """Whether :func:`pointwise` slices B images of N points: without autograd, above 2 POINT_CHUNK points."""
    return not torch.is_grad_enabled() and B * N > 2 * POINT_CHUNK


def pointwise(fn, *xs: Tensor, channel_major: bool = False) -> Tensor:
    """Apply a pointwise function ``fn(*xs)`` (xs [B, N, *]) slice by slice along the point dim.

    At sampling resolutions the features are large ([8, 65536, 32] at 256 px): every LayerNorm, GELU
    and residual add then streams them through DRAM, and slices of ~2^14 points that stay in cache run
    ~2.5x faster on 2 CPU cores. Results equal the one-go call up to float rounding (the function is
    pointwise; tested). With autograd on (training, small N) it runs in one go so the graph stays small.

    ``channel_major``: the sliced result [B, N, C] is a view of channel-major storage [B, C, N], each slice
    transposed while it is in cache. The dense backend's FFT reads channel planes, which then need no
    separate transpose pass over the whole tensor (:func:`infdiff.sparse._planes`).
    """
    B, N = xs[0].shape[:2]
    if not chunked(B, N):
        return fn(*xs)
    step = max(1, POINT_CHUNK // B)
    out = None
    for n0 in range(0, N, step):
        # One copy per slice makes it contiguous (inputs may be strided views, e.g. the dense conv's
        # transposed output); every later op then runs on cache-resident contiguous memory.
        y = fn(*(x[:, n0:n0 + step].contiguous() for x in xs))
        if out is None:
            out = (y.new_empty(B, y.shape[2], N).transpose(1, 2) if channel_major and y.ndim == 3
                   else y.new_empty(B, N, *y.shape[2:]))
        out[:, n0:n0 + step] = y
    return out


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps.

    Args:
        t: [B] timesteps in [0, 1000) (int or float).
        dim: embedding size.
    Returns:
        [B, dim] float32: cos/sin at geometrically spaced frequencies (Vaswani et al.; as N&D 2021).
    """
    half = dim // 2
    # Periods from 2 pi to ~max_period: distinguishes all 1000 integer steps and also fractional ones.
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:  # odd sizes: pad with a zero column so the shape is exactly [B, dim]
        emb = F.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """t [B] -> temb [B, dim]: sinusoid then Linear-SiLU-Linear (shared by all blocks)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        # in the weights' dtype: float32 normally (autocast casts from there), float64 in identity tests
        return self.mlp(timestep_embedding(t, self.dim).to(self.mlp[0].weight.dtype))


def latent_scale(z_dim: int, channels: int) -> nn.Module | None:
    """The z-conditioning of a modulated layer: z [B, z_dim] -> s_z [B, channels], or None if z_dim is 0.

    Diffusion autoencoders (Preechakul et al. 2022) and the official ∞-Diff code scale a layer's t-modulated
    activations by (1 + s_z(z)), s_z = Linear(SiLU(z)). Bias-free, so z = 0 gives s_z = 0 and the layer
    (hence the network) is exactly the unconditional one; zero-initialised, so a new autoencoder starts as
    the unconditional network. Built on a forked RNG: every other parameter of the network draws the same
    initial values as the unconditional network for one seed.
    """
    if not z_dim:
        return None
    with torch.random.fork_rng(devices=[]):
        proj = nn.Sequential(nn.SiLU(), nn.Linear(z_dim, channels, bias=False))
    nn.init.zeros_(proj[1].weight)
    return proj


def layer_norm(v: Tensor, eps: float = 1e-5) -> Tensor:
    """LayerNorm over the last dim without an affine: equals ``F.layer_norm(v, v.shape[-1:], eps=eps)``.

    A float32 input is normalised by torch's group-norm kernel with one group per row (``[M, 1, C]``),
    which computes the same biased variance with the same eps. On a CPU that kernel is faster for the
    narrow float32 rows of these networks: 1.5-1.9x forward, 1.1-1.2x forward + backward at C = 32-256,
    measured on 2 cores of the AMX Xeon (README, "Performance"), and the residual stream that the
    sampling path normalises is float32. For bf16 inputs both kernels take the same time, so they keep
    ``F.layer_norm``. Tested equal to it to float rounding, values and gradients, dtypes included.

    Args:
        v: [..., C]. Returns: [..., C].
    """
    C = v.shape[-1]
    if v.dtype != torch.float32:
        return F.layer_norm(v, (C,), eps=eps)
    return F.group_norm(v.reshape(-1, 1, C), 1, eps=eps).view(v.shape)


class ModulatedLayerNorm(nn.Module):
    """LayerNorm over channels with a t-dependent affine: ``LN(v) * (1 + scale(t)) + shift(t)``.

    The projection is zero-initialised so that the block starts as a plain LayerNorm (the time signal
    is learnt rather than injected as noise at initialisation), as N&D's scale-shift norm. With
    ``z_dim > 0`` (the autoencoder framework) the result is further scaled by ``1 + s_z(z)``
    (:func:`latent_scale`).

    The modulation depends on the image only, not on the point: :meth:`modulation` computes it once per
    forward and :meth:`modulate` applies it to any slice of points (the chunked sampling path).
    """

    def __init__(self, channels: int, time_dim: int, z_dim: int = 0):
        super().__init__()
        self.proj = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, 2 * channels))
        nn.init.zeros_(self.proj[1].weight)
        nn.init.zeros_(self.proj[1].bias)
        self.zproj = latent_scale(z_dim, channels)

    def modulation(self, temb: Tensor, z: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """temb [B, time_dim], z [B, z_dim] (only with z_dim > 0) -> (1 + scale, shift, 1 + s_z or None),
        each [B, 1, C]."""
        scale, shift = self.proj(temb).unsqueeze(1).chunk(2, dim=-1)     # [B, 1, C] each
        if self.zproj is None:
            return 1 + scale, shift, None
        if z is None:
            raise ValueError("this layer is conditioned on z (autoencoder framework): pass z [B, z_dim]")
        return 1 + scale, shift, (1 + self.zproj(z)).unsqueeze(1)

    @staticmethod
    def modulate(v: Tensor, mod: tuple[Tensor, Tensor, Tensor | None]) -> Tensor:
        """v [B, N, C] and a :meth:`modulation` -> LN(v) * (1 + scale) + shift (times 1 + s_z), [B, N, C]."""
        gain, shift, zgain = mod
        if fused_norm.usable(v):      # no autograd, on a CPU: one C++ pass (sampling)
            return fused_norm.modulated_norm(v, gain, shift, zgain)
        if layer_norm_kernel.usable(v, gain, shift, zgain):   # training on a CPU: one C++ pass each way
            return layer_norm_kernel.modulated_layer_norm(v, gain, shift, zgain)
        # (1 + scale): the zero-initialised projection leaves the plain LayerNorm at the start.
        out = torch.addcmul(shift, layer_norm(v), gain)
        return out if zgain is None else out * zgain

    def forward(self, v: Tensor, temb: Tensor, z: Tensor | None = None) -> Tensor:
        """v [B, N, C], temb [B, time_dim], z [B, z_dim] (only with z_dim > 0) -> [B, N, C]."""
        return self.modulate(v, self.modulation(temb, z))


class SparseDepthwiseConv(nn.Module):
    """Sparse depthwise convolution operator (Eq. 20) with a bias.

    The kernel ``weight [C, k, k]`` lives at the training resolution; at a geometry whose kernel size
    differs (another R) it is resized with :func:`resize_kernel`, which keeps its integral, so the layer
    computes the same continuous operator at every resolution.
    """

    def __init__(self, channels: int, kernel_size: int = 7, backend: str = "auto"):
        super().__init__()
        self.kernel_size, self.backend = kernel_size, backend
        self.weight = nn.Parameter(torch.empty(channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        # nn.Conv2d's default (Kaiming-uniform with a = sqrt(5)) for a depthwise kernel: fan_in = k*k.
        bound = 1.0 / kernel_size
        nn.init.uniform_(self.weight, -bound, bound)
        # Kernel spectra of the FFT path, kept between the steps of sampling (no gradient) while the
        # weight stays the same (same storage and version); not part of the state dict.
        self._spectra: dict = {}
        self._spectra_of: tuple | None = None

    def _spectrum_cache(self) -> dict | None:
        if torch.is_grad_enabled():
            return None
        of = (self.weight.data_ptr(), self.weight._version)
        if of != self._spectra_of:
            self._spectra, self._spectra_of = {}, of
        return self._spectra

    def operator(self, v: Tensor, geom: SparseGeometry) -> Tensor:
        """The integral operator of Eq. 20 without the bias: v [B, N, C] -> [B, N, C]."""
        w = resize_kernel(self.weight, geom.k) if geom.k != self.kernel_size else self.weight
        return sparse_depthwise_conv(v, geom, w, self.backend, spectra=self._spectrum_cache())

    def reads_planes(self, geom: SparseGeometry) -> bool:
        """Whether :meth:`operator` reads its input as channel planes at ``geom`` (the FFT of the dense backend,
        from k = 15 taps: 64 px and up for the embedded model); at 32 px the direct conv reads point-major rows."""
        return reads_planes(geom, self.backend, self.weight.shape[0])

    def forward(self, v: Tensor, geom: SparseGeometry) -> Tensor:
        """v [B, N, C] at the points of ``geom`` -> [B, N, C]."""
        return self.operator(v, geom) + self.bias


class SparseRegularConv(nn.Module):
    """Sparse convolution operator (Eq. 20) with a full C x C kernel: the "Regular Convs" ablation.

    Same interface, normaliser and resizing as :class:`SparseDepthwiseConv`; only kappa changes from a
    diagonal to a dense C_out x C_in matrix per offset (``weight [C, C, k, k]``, k*C times the
    parameters). The paper keeps depthwise kernels because they generalise better at low sampling
    ratios (Sec. 4.2): a full kernel has more values to fit from the same sparse windows.
    """

    def __init__(self, channels: int, kernel_size: int = 7, backend: str = "auto"):
        super().__init__()
        self.kernel_size, self.backend = kernel_size, backend
        self.weight = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        # nn.Conv2d's default (Kaiming-uniform, a = sqrt(5)): bound 1 / sqrt(fan_in), fan_in = C * k * k,
        # the same rule the depthwise kernel follows with fan_in = k * k.
        bound = 1.0 / math.sqrt(channels * kernel_size ** 2)
        nn.init.uniform_(self.weight, -bound, bound)

    def operator(self, v: Tensor, geom: SparseGeometry) -> Tensor:
        """Eq. 20 with a full kernel, without the bias: v [B, N, C] -> [B, N, C]."""
        w = resize_kernel(self.weight, geom.k) if geom.k != self.kernel_size else self.weight
        return sparse_conv(v, geom, w, self.backend)

    @staticmethod
    def reads_planes(geom: SparseGeometry) -> bool:
        """The block writes this operator's input channel-major at sampling resolutions (as it always has: the
        ablation's layout choice was not measured)."""
        return True

    def forward(self, v: Tensor, geom: SparseGeometry) -> Tensor:
        return self.operator(v, geom) + self.bias


class SparseNonlinearKernel(nn.Module):
    """Spatially nonlinear kernel operator: conv -> GELU -> conv (the "Nonlinear Kernel" ablation).

    Eq. 18 lets kappa depend nonlinearly on the function; the paper implements that ablation as
    "conv, activation, conv" (Sec. 5), i.e. two sparse depthwise convolutions (each Eq. 20, each
    normalised by its window count) with a pointwise GELU between them:

        K(v) = conv2(GELU(conv1(v) + b1)) + b2

    ``operator`` returns K(v) without b2 and ``bias`` is b2, so :class:`SparseResBlock` adds it in its
    pointwise tail exactly as for the linear kernel. ``regular=True`` uses full kernels for both convs.
    """

    def __init__(self, channels: int, kernel_size: int = 7, backend: str = "auto", regular: bool = False):
        super().__init__()
        conv = SparseRegularConv if regular else SparseDepthwiseConv
        self.conv1 = conv(channels, kernel_size, backend)
        self.conv2 = conv(channels, kernel_size, backend)

    @property
    def bias(self) -> Tensor:
        return self.conv2.bias

    def operator(self, v: Tensor, geom: SparseGeometry) -> Tensor:
        """conv2(GELU(conv1(v))) without conv2's bias: v [B, N, C] -> [B, N, C] (both share ``geom``)."""
        h = self.conv1.operator(v, geom)
        # Pointwise (chunked at sampling resolutions): bias + activation between the two integrals.
        h = pointwise(lambda a: F.gelu(a + self.conv1.bias), h)
        return self.conv2.operator(h, geom)

    def reads_planes(self, geom: SparseGeometry) -> bool:
        """As its first convolution (the block writes that one's input)."""
        return self.conv1.reads_planes(geom)

    def forward(self, v: Tensor, geom: SparseGeometry) -> Tensor:
        return self.operator(v, geom) + self.bias


class PointMLP(nn.Module):
    """Pointwise MLP C -> hidden -> C with GELU (ConvNeXt's inverted bottleneck)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        # bf16 copies of the parameters for the sampling path, kept while the parameters stay the same
        # (same storage and version); not part of the state dict.
        self._bf16: tuple[Tensor, ...] = ()
        self._bf16_of: tuple | None = None

    def bf16_params(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(fc1.weight, fc1.bias, fc2.weight, fc2.bias) in bf16, cast once for all the slices and steps of a
        sampling run instead of at every call (an optimiser step or a loaded state changes the versions)."""
        params = (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)
        of = tuple((p.data_ptr(), p._version) for p in params)
        if of != self._bf16_of:
            self._bf16 = tuple(p.detach().to(torch.bfloat16) for p in params)
            self._bf16_of = of
        return self._bf16

    def forward(self, v: Tensor, residual: Tensor | None = None) -> Tensor:
        """v [..., C] -> fc2(GELU(fc1(v))) [..., C], plus ``residual`` [..., C] when given."""
        if fused_norm.gelu_mlp_usable(v):     # sampling under bf16 autocast on a CPU: fused in oneDNN
            return fused_norm.gelu_mlp(v, self.bf16_params(), residual)
        if point_mlp.usable(v):               # training under bf16 autocast on a CPU: GELU' kept, see there
            return point_mlp.gelu_mlp(v, self.fc1, self.fc2, residual)
        out = self.fc2(F.gelu(self.fc1(v)))
        return out if residual is None else residual + out


class SparseResBlock(nn.Module):
    """Sparse residual convolution operator block (App. A; ConvNeXt-like):

        v <- v + K(LN_t(v))          K: sparse depthwise conv, Eq. 20, normalised by the window count
        v <- v + MLP(LN_t(v))

    Args:
        channels: C; kernel_size: k at the training resolution; time_dim: size of temb;
        mlp_ratio: hidden width of the MLP in units of C; backend: sparse conv backend.
        regular_conv: K uses a full C x C kernel (:class:`SparseRegularConv`), Table 2 ablation.
        nonlinear_kernel: K is conv -> GELU -> conv (:class:`SparseNonlinearKernel`), Table 2 ablation.
        z_dim: > 0 conditions both norms on a latent z (autoencoder framework, :func:`latent_scale`).
    """

    def __init__(self, channels: int, kernel_size: int, time_dim: int, mlp_ratio: int = 2,
                 backend: str = "auto", regular_conv: bool = False, nonlinear_kernel: bool = False,
                 z_dim: int = 0):
        super().__init__()
        self.norm1 = ModulatedLayerNorm(channels, time_dim, z_dim)
        if not (regular_conv or nonlinear_kernel):
            self.conv = SparseDepthwiseConv(channels, kernel_size, backend)
        else:
            # Controlled ablation: the ablated operator draws its initial weights from a forked RNG,
            # and the global RNG then advances exactly as the default depthwise kernel's init would
            # (a throw-away SparseDepthwiseConv). Every parameter outside K (here and in every later
            # module) therefore starts from the same values as the default network for one seed.
            with torch.random.fork_rng(devices=[]):
                self.conv = (SparseNonlinearKernel(channels, kernel_size, backend, regular=regular_conv)
                             if nonlinear_kernel else SparseRegularConv(channels, kernel_size, backend))
            SparseDepthwiseConv(channels, kernel_size, backend)
        self.norm2 = ModulatedLayerNorm(channels, time_dim, z_dim)
        self.mlp = PointMLP(channels, mlp_ratio * channels)

    def forward(self, v: Tensor, geom: SparseGeometry, temb: Tensor, z: Tensor | None = None) -> Tensor:
        """v [B, N, C], temb [B, time_dim], z [B, z_dim] (autoencoder framework only) -> [B, N, C]."""
        mod1, mod2 = self.norm1.modulation(temb, z), self.norm2.modulation(temb, z)   # once, not per slice
        if fused_norm.residual_mlp_usable(v, self.mlp.fc1):
            # Sampling on a CPU: the norm in one C++ pass, in float32 (the dtype every sparse backend
            # computes in), channel-major where pointwise() would chunk and the operator reads channel planes
            # (the FFT), else point-major (the direct conv's channels-last view, the gathers); everything
            # after the convolution (residual, bias, norm, MLP, residual) in one more.
            x = fused_norm.modulated_norm(v, *mod1, dtype=torch.float32,
                                          channel_major=chunked(*v.shape[:2]) and self.conv.reads_planes(geom))
            h = self.conv.operator(x, geom)
            return fused_norm.residual_mlp(v, mod2, self.mlp.fc1, self.mlp.fc2, h=h, cbias=self.conv.bias)
        # Channel-major at sampling resolutions where the operator reads channel planes (the full-grid FFT).
        h = self.conv.operator(pointwise(lambda x: self.norm1.modulate(x, mod1), v,
                                         channel_major=chunked(*v.shape[:2]) and self.conv.reads_planes(geom)),
                               geom)
        # Everything after the convolution is pointwise: residual, bias, norm, MLP, residual.
        return pointwise(lambda x, y: self._mlp_residual(x + y + self.conv.bias, mod2), v, h)

    def _mlp_residual(self, v: Tensor, mod2) -> Tensor:
        return v + self.mlp(self.norm2.modulate(v, mod2))
