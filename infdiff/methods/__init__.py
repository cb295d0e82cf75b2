"""Generative methods: the spec table, and ``build_method``, the only door to a method's code.

The package import is torch-free (specs only); ``build_method`` imports a method's module when it builds
one. The layout:

* :mod:`infdiff.methods.specs`: the table of :class:`MethodSpec` (what each method is and can do);
* :mod:`infdiff.methods.base`: the ``Method`` interface and its one sampling loop;
* :mod:`infdiff.methods.mollified`: the mollified point process shared by ∞-Diff and the per-pixel MLP;
* :mod:`infdiff.methods.infdiff`: ∞-Diff itself; the baselines live in ``baselines/``.

Usage::

    method = build_method(run_cfg)                     # run_cfg: a resolved run (infdiff.config.run_config)
    loss = method.training_loss(x0, generator)         # scalar; draws t, noise and coordinates itself
    x = method.sample(seeds, resolution, steps)        # [len(seeds), C, R, R] in [-1, 1]
"""

from __future__ import annotations

import importlib

from infdiff.methods.specs import METHODS, MethodSpec, SpecError, method_spec

__all__ = ["METHODS", "MethodSpec", "SpecError", "method_spec", "build_method", "entry_point"]


def entry_point(spec: MethodSpec):
    """The callable named by ``spec.entry`` ("package.module:Name"), imported on first use."""
    module, _, attr = spec.entry.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_method(cfg: dict):
    """Instantiate the method named by ``cfg["method"]`` from a resolved run config."""
    return entry_point(method_spec(cfg["method"]))(cfg)
