"""The table of method specs: the one place that names the generative methods the harness knows.

Torch-free, so that config validation (at Snakemake parse time), table labels and figure selection can
read it without importing a network. Everything else reaches a method through this table:

* :func:`infdiff.methods.build_method` imports ``entry`` and builds the method from a run config;
* :mod:`infdiff.config` validates a run's ``method``, keeps only the run keys in ``sections``, and runs
  the method's cross-key ``check``;
* table rows (:mod:`infdiff.report.rows`) use ``display`` and ``label_keys``;
* the sampling code resizes the samples of a method without ``any_resolution``, and the figures that
  start the reverse process from a noised image (super-resolution, inpainting) need ``starts_part_way``.

Adding a method means: its module (a :class:`~infdiff.methods.base.Method` subclass), one line in
:data:`METHODS`, and its schema section (``$defs/<section>`` in workflow/schemas/config.schema.yaml,
referenced from ``$defs/run``). Nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

__all__ = ["MethodSpec", "METHODS", "method_spec", "SpecError"]


class SpecError(ValueError):
    """A run config that a method cannot be built from (raised before any job starts)."""


@dataclass(frozen=True)
class MethodSpec:
    """What the harness knows about a method before importing it.

    Attributes:
        name: the value of a run's ``method`` key.
        entry: "package.module:Name" of the callable that builds the method from a resolved run config.
        section: the run's config section with the method's own hyperparameters (schema ``$defs/<section>``).
        shared: other run keys that shape it (e.g. the mollified process ``diffusion`` and the coordinate
            subset ``ratio`` / ``coords``); a run's resolved config keeps only ``section`` and these, so
            its hash covers only what shapes its results.
        display: name in tables and figures.
        any_resolution: samples at any resolution from one model (otherwise at its training resolution,
            and the harness resizes and labels the rows).
        starts_part_way: can run the reverse process from a noised image at an intermediate step
            (SDEdit super-resolution, reconstruction-guided inpainting).
        label_keys: dotted run keys whose non-default value names a variant in table rows ("ratio 1/8").
        check: cross-key checks the schema cannot express: ``check(run_name, run, config)`` raises
            :class:`SpecError`; torch-free, so it lives here rather than in the method's module.
    """

    name: str
    entry: str
    section: str
    shared: tuple[str, ...]
    display: str
    any_resolution: bool
    starts_part_way: bool
    label_keys: tuple[str, ...] = ()
    check: Optional[Callable[[str, dict, dict], None]] = None

    @property
    def sections(self) -> tuple[str, ...]:
        """Every run key this method reads besides the common ones (its section first)."""
        return (self.section, *self.shared)


# -------------------------------------------------------------------------------- cross-key checks
def _check_infdiff(name: str, run: dict, config: dict) -> None:
    model = run["model"]
    if run["framework"] == "autoencoder" and model["sparse_downsample"]:
        raise SpecError(f"runs.{name}: the autoencoder framework's encoder is the grid path's first half "
                        "(points -> grid -> U-Net down path); model.sparse_downsample has no grid path: use "
                        "framework: unconditional for that ablation")
    if model["kernel_size"] % 2 == 0:
        raise SpecError(f"runs.{name}.model.kernel_size must be odd (a centred window), got {model['kernel_size']}")
    levels = len(model["unet_mults"])
    # every U-Net level but the last halves the fixed grid
    if model["grid_res"] % 2 ** (levels - 1):
        raise SpecError(f"runs.{name}.model.grid_res={model['grid_res']} must be divisible by "
                        f"2**(len(unet_mults)-1) = {2 ** (levels - 1)}")


def _check_simple_diffusion(name: str, run: dict, config: dict) -> None:
    sd, R = run["simple_diffusion"], run["resolution"]
    halvings = len(sd["channels"]) + 1
    # the stem halves R, every conv level ends by halving it again; the transformer runs on what is left
    if R % 2 ** halvings:
        raise SpecError(f"runs.{name}: resolution {R} must be divisible by 2**(len(simple_diffusion.channels)+1) "
                        f"= {2 ** halvings} (the stem and each level halve it)")
    if sd["schedule"] == "interpolated" and sd["interpolate_from"] == R:
        raise SpecError(f"runs.{name}.simple_diffusion.interpolate_from equals the resolution {R}: the "
                        "interpolated schedule would be the plain cosine one; use a lower resolution")
    lo = sd["multiscale_min"]
    if lo > R or R % lo or (R // lo) & (R // lo - 1):
        raise SpecError(f"runs.{name}.simple_diffusion.multiscale_min={lo} must be R_train={R} divided by a "
                        "power of two (the loss levels are min, 2 min, .., R)")
    if sd["transformer_width"] % sd["heads"]:
        raise SpecError(f"runs.{name}.simple_diffusion.transformer_width must be divisible by heads")


# ------------------------------------------------------------------------------------------ table
METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("infdiff", "infdiff.methods.infdiff:InfDiff", "model",
               ("diffusion", "ratio", "coords", "framework", "autoencoder"),
               display="∞-Diff", any_resolution=True, starts_part_way=True,
               label_keys=("framework", "ratio", "coords", "model.sparse_downsample", "model.nonlinear_kernel",
                           "model.regular_conv"),
               check=_check_infdiff),
    MethodSpec("mlp_pixel", "baselines.mlp_pixel:build_mlp_pixel", "mlp_pixel", ("diffusion", "ratio", "coords"),
               display="per-pixel MLP diffusion", any_resolution=True, starts_part_way=True,
               label_keys=("mlp_pixel.variant",)),
    MethodSpec("simple_diffusion", "baselines.simple_diffusion:SimpleDiffusion", "simple_diffusion", (),
               display="simple diffusion U-ViT", any_resolution=False, starts_part_way=False,
               label_keys=("simple_diffusion.stem", "simple_diffusion.schedule"), check=_check_simple_diffusion),
)}


def method_spec(name: str) -> MethodSpec:
    """The spec of method ``name``; an unknown name is a :class:`SpecError` listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise SpecError(f"unknown method '{name}' (known: {', '.join(sorted(METHODS))})") from None
