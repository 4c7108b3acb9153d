"""Validated parameters: `params.yaml` loaded into frozen pydantic models.

One model per stage section. Every entry point loads the *whole* file through
`load_params`, so a typo anywhere fails before any work starts, with the key
and the file named. This module must stay cheap to import (no TensorFlow).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fer_tasks.lib.errors import InputError
from fer_tasks.lib.yamlfile import key_lines, read_yaml  # noqa: F401 - read_yaml: API

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
USAGES = ("Training", "PublicTest", "PrivateTest")


# Layers of the `base` model (backbone + Dropout + softmax head) per backbone at the
# stored 48 px, for checking an `unfreeze` count without building the model (another
# input_size adds one Resizing layer); tests/test_backbones.py builds each and checks.
# The block names every backbone has:
BASE_LAYERS = {"efficientnet_lite0": 146, "efficientnet_b0": 241}
BLOCKS = ("all", "top", *(f"block{i}" for i in range(1, 8)))


class _Section(BaseModel):
    # strict: no bool -> int (`epochs: true`), no str -> bool (`augment: "yes"`),
    # no str -> number; an int is still a valid float
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SynthesizeParams(_Section):
    n_samples: int = Field(3500, ge=70, le=1_000_000, description="faces to generate")
    seed: Seed = 0
    # share of rows labelled Training / PublicTest / PrivateTest
    val_fraction: Fraction = 0.15
    test_fraction: Fraction = 0.15

    @model_validator(mode="after")
    def _check_fractions(self) -> SynthesizeParams:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise InputError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} "
                "leaves no Training rows (must be < 1)"
            )
        return self


class SplitRoles(_Section):
    """The source split that plays val and test (train is Training); stages/prepare.py."""

    val: Literal["auto", "PublicTest", "PrivateTest", "carve"] = "auto"
    test: Literal["auto", "PublicTest", "PrivateTest", "carve"] = "auto"

    @model_validator(mode="after")
    def _distinct(self) -> SplitRoles:
        if self.val == self.test and self.val not in ("auto", "carve"):
            raise InputError(f"val and test are both {self.val}: one split cannot play both roles")
        return self


class PrepareParams(_Section):
    # FER2013 CSV (plain or .gz) or an image-folder tree with train/ and test/
    source: str = Field("data/raw/synthetic/fer_synth.csv", min_length=1)
    format: Literal["auto", "csv", "folder"] = "auto"
    roles: SplitRoles = SplitRoles()
    # shares of Training carved as val / test when their role is carved
    val_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1
    test_fraction: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.1
    on_bad_row: Literal["error", "skip"] = "error"
    chunk_rows: int = Field(4096, ge=1, le=1_000_000)
    seed: Seed = 0


class RebalanceParams(_Section):
    method: Literal["none", "class_weight", "oversample", "undersample"] = "class_weight"
    # class_weight: "balanced" = n / (k * n_c); "effective" = (1 - beta) / (1 - beta^n_c)
    weighting: Literal["balanced", "effective"] = "balanced"
    beta: float = Field(0.999, gt=0.0, lt=1.0)
    # oversample: raise each class to this share of the largest class;
    # undersample: cut each class to this multiple of the smallest class
    target_ratio: float = Field(1.0, gt=0.0, le=100.0)
    augment: bool = True
    seed: Seed = 0


class ModelParams(_Section):
    backbone: Literal["efficientnet_lite0", "efficientnet_b0"] = "efficientnet_lite0"
    # imagenet | none | path to a local weights file
    weights: str = Field("imagenet", min_length=1)
    input_size: int = Field(48, ge=32, le=600)
    pooling: Literal["max", "avg"] = "max"
    # Keras dtype policy the backbone is built under (its saved layers keep it, so
    # every later stage computes in it); mixed_float16 pays off on GPUs with tensor
    # cores, and is slower than float32 on CPUs. The softmax head stays float32.
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"


class FeaturesParams(_Section):
    batch_size: int = Field(256, ge=1, le=8192)
    # None: the backbone's pooled last feature map (the write-up's feature vector).
    # A layer name (e.g. block5c_add): that layer's feature map, flattened, so the
    # vector keeps *where* on the face each activation is; mid-level maps
    # transfer better from ImageNet to faces (measured by bench/svm_baseline.py).
    layer: str | None = Field(None, min_length=1)


class SvmParams(_Section):
    kernel: Literal["linear", "rbf"] = "linear"
    C: float = Field(0.001, gt=0.0, le=1e6)
    class_weight: Literal["balanced", "none"] = "balanced"
    pca_components: int | None = Field(None, ge=1, le=10_000)
    max_train_samples: int | None = Field(None, ge=10)
    max_iter: int = Field(5000, ge=10)
    seed: Seed = 0


class BaseModelParams(_Section):
    """The write-up's `build_model`: frozen backbone + Dropout + L2 softmax head."""

    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    l2_coef: float = Field(1e-4, ge=0.0, le=1.0)
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    seed: Seed = 0


class PhaseParams(_Section):
    after: str = Field(description="previous phase name, or 'base'")
    # layer count from the end of the model (the write-up's 6 / 19 / 78) or a block name
    unfreeze: int | str = "top"
    unfreeze_bn: bool = False
    epochs: int = Field(ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=8192)
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    # every schedule is a function of the epoch alone, never of `epochs`, so raising
    # `epochs` resumes from the checkpoint: exponential multiplies by lr_decay_rate each
    # epoch; cosine falls from learning_rate to lr_min over lr_horizon epochs, then holds lr_min
    lr_schedule: Literal["constant", "cosine", "exponential"] = "constant"
    lr_decay_rate: float = Field(0.9, gt=0.0, le=1.0)
    lr_horizon: int | None = Field(None, ge=1, le=10_000)
    lr_min: float = Field(0.0, ge=0.0, le=1.0)
    # soft targets: 1 - s on the true class plus s / 7 on every class (0 = hard labels)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    augment: bool = True
    # geometric augmentation on top of flip/brightness/contrast (0 = off): random
    # shift as a fraction of the side, rotation in degrees, zoom as a fraction
    shift: float = Field(0.0, ge=0.0, le=0.5)
    rotate: float = Field(0.0, ge=0.0, le=180.0)
    zoom: float = Field(0.0, ge=0.0, le=0.5)
    # mixup's Beta(alpha, alpha) parameter (0 = off; 0.2-0.4 is the usual range)
    mixup: float = Field(0.0, ge=0.0, le=10.0)
    # Keras' `use_ema`: the phase's model gets the moving average of its weights
    use_ema: bool = False
    ema_momentum: float = Field(0.99, gt=0.0, lt=1.0)
    seed: Seed = 0
    deterministic: bool = False
    max_class_share: float = Field(0.9, gt=0.0, le=1.0)
    on_collapse: Literal["fail", "warn"] = "fail"
    # cap on batches per epoch (None = the whole training split); for smoke runs
    steps_per_epoch: int | None = Field(None, ge=1)
    # devices (fer_tasks/lib/distribute.py): default = one device; mirrored = every local
    # GPU, or the `devices` listed (e.g. ["/gpu:0", "/gpu:1"]); multi_worker = the
    # machines of the TF_CONFIG environment variable. batch_size stays the global batch.
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    devices: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1)

    @field_validator("unfreeze")
    @classmethod
    def _check_unfreeze(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise InputError(f"must be >= 1 or a block name, got {v}")
        if isinstance(v, str) and v.lower() not in BLOCKS:
            hint = " (a layer count is a number, not a string)" if v.isdigit() else ""
            raise InputError(
                f"{v!r} is not a block name{hint}: use a layer count or one of {', '.join(BLOCKS)}"
            )
        return v

    @model_validator(mode="after")
    def _check_schedule(self) -> PhaseParams:
        if self.lr_schedule == "cosine" and self.lr_horizon is None:
            raise InputError(
                "lr_schedule cosine needs lr_horizon: the epochs over which the rate falls "
                "to lr_min (then held), independent of `epochs` so that raising it resumes"
            )
        if self.lr_min > self.learning_rate:
            raise InputError(f"lr_min {self.lr_min} is above learning_rate {self.learning_rate}")
        if "ema_momentum" in self.model_fields_set and not self.use_ema:
            raise InputError("ema_momentum has no effect without use_ema: true")
        return self

    @model_validator(mode="after")
    def _check_devices(self) -> PhaseParams:
        if self.devices is not None and self.strategy != "mirrored":
            raise InputError(
                f"devices is only for strategy mirrored (strategy is {self.strategy}; "
                "multi_worker takes its machines from TF_CONFIG)"
            )
        if self.devices is not None and len(set(self.devices)) < len(self.devices):
            raise InputError(f"devices names a device twice: {self.devices}")
        return self


class FinetuneParams(_Section):
    phases: dict[str, PhaseParams] = Field(min_length=1)
    # the last phase of the chain: evaluate/export read its model (dvc.yaml uses this key)
    final: str

    @model_validator(mode="after")
    def _check_chain(self) -> FinetuneParams:
        for name, phase in self.phases.items():
            if name == "base" or not name.replace("_", "").replace("-", "").isalnum():
                raise InputError(f"phase name {name!r} must be alphanumeric and not 'base'")
            if phase.after != "base" and phase.after not in self.phases:
                raise InputError(f"phases.{name}.after: unknown phase {phase.after!r}")
        for name in self.phases:  # every chain must reach 'base' without a cycle
            seen, cur = set(), name
            while cur != "base":
                if cur in seen:
                    raise InputError(f"phases.{name}.after: cycle through {cur!r}")
                seen.add(cur)
                cur = self.phases[cur].after
        if self.final not in self.phases:
            raise InputError(f"final: {self.final!r} is not a phase (have {list(self.phases)})")
        for name, phase in self.phases.items():
            if phase.after == self.final:
                raise InputError(
                    f"final: {self.final!r} is continued by phase {name!r}; "
                    f"set finetune.final to the last phase of the chain"
                )
        return self

    def order(self) -> list[str]:
        """Phase names from base outward (a parent always before its children)."""
        done: list[str] = []
        while len(done) < len(self.phases):
            for name, p in self.phases.items():
                if name not in done and (p.after == "base" or p.after in done):
                    done.append(name)
        return done

    def chain(self, name: str | None = None) -> list[str]:
        """The phases from base out to `name` (default: final), in training order."""
        out, cur = [], name or self.final
        while cur != "base":
            out.append(cur)
            cur = self.phases[cur].after
        return out[::-1]

    def start_epoch(self, name: str) -> int:
        """Global epoch index at which phase `name` starts (sum of its ancestors' epochs)."""
        return sum(self.phases[p].epochs for p in self.chain(name)[:-1])


class CalibrateParams(_Section):
    # flip TTA: the mean of the calibrated softmax of a face and of its mirror image
    tta_flip: bool = True
    # temperature scaling fitted on val (Guo et al., 2017); false keeps T = 1
    temperature: bool = True
    # pixels cut from each side of the 48x48 face, the centre scaled back (a closer view),
    # before every pass; calibrate reports val accuracy with and without it
    center_crop: int = Field(0, ge=0, le=8)
    batch_size: int = Field(256, ge=1, le=8192)


class EvaluateParams(_Section):
    batch_size: int = Field(256, ge=1, le=8192)
    # errors.png: the most confident mistakes shown for each true class
    gallery_per_class: int = Field(4, ge=1, le=20)
    # metrics.json's ci95: percentile-bootstrap intervals over the test faces (0 = none)
    bootstrap_resamples: int = Field(1000, ge=0, le=100_000)


class ExportParams(_Section):
    max_int8_drop: float = Field(1.5, ge=0.0, le=100.0, description="accuracy points")
    representative_samples: int = Field(200, ge=1, le=100_000)
    latency_runs: int = Field(100, ge=1, le=100_000)
    seed: Seed = 0


class Params(_Section):
    synthesize: SynthesizeParams = SynthesizeParams()
    prepare: PrepareParams = PrepareParams()
    rebalance: RebalanceParams = RebalanceParams()
    model: ModelParams = ModelParams()
    features: FeaturesParams = FeaturesParams()
    svm: SvmParams = SvmParams()
    base: BaseModelParams = BaseModelParams()
    finetune: FinetuneParams
    calibrate: CalibrateParams = CalibrateParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()

    def unfreeze_errors(self) -> dict[str, str]:
        """Layer counts beyond the configured backbone's base model, by dotted key."""
        limit = BASE_LAYERS[self.model.backbone] + (self.model.input_size != 48)
        return {
            f"finetune.phases.{name}.unfreeze": f"{phase.unfreeze} layers, but the "
            f"{self.model.backbone} model has {limit} (use 'all' for every layer)"
            for name, phase in self.finetune.phases.items()
            if isinstance(phase.unfreeze, int) and phase.unfreeze > limit
        }


class ParamsError(InputError):
    """A params file that does not validate; the message names the file and keys."""


def _at(key: str, lines_of: dict[str, int]) -> str:
    """'line N: ' for the key, or for the nearest enclosing key the file has; else ''."""
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in lines_of:
            return f"line {lines_of['.'.join(parts[:i])]}: "
    return ""


def _invalid(path: str | Path, entries: list[str]) -> ParamsError:
    return ParamsError("\n".join([f"{path}: invalid parameters", *(f"  {e}" for e in entries)]))


REMOVED = {  # keys that existed once, with what replaced them
    "evaluate.split": "removed: evaluate scores the test split once and every choice is made "
    "on val; prepare.roles says which source split is test",
}


def _entries(err: ValidationError, lines_of: dict[str, int]) -> list[str]:
    entries = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            why = f" ({REMOVED[key]})" if key in REMOVED else ""
            entries.append(f"{_at(key, lines_of)}{key}: unknown key{why}")
        else:
            got = "" if isinstance(e.get("input"), dict) else f" (got {e.get('input')!r})"
            entries.append(f"{_at(key, lines_of)}{key}: {e['msg']}{got}")
    return entries


# keys a params file must spell out: their defaults are for code and tests, and a file
# that lost one would silently train on other data or other weights than meant
REQUIRED_KEYS = (("prepare", "source"), ("model", "weights"))


def parse_params(data: dict, path: str | Path = "params.yaml", text: str | None = None) -> Params:
    """Validate an already-loaded params mapping; `text`, its YAML, gives the error lines.

    The lines are looked up only when there is an error to report.
    """

    def lines_of() -> dict[str, int]:
        return key_lines(text) if text is not None else {}

    missing = [
        k for k in REQUIRED_KEYS if not isinstance(data.get(k[0]), dict) or k[1] not in data[k[0]]
    ]
    if missing:
        lines = lines_of()
        raise _invalid(
            path,
            [
                f"{section}.{key}: required key missing"
                + (f" (its section starts on line {lines[section]})" if section in lines else "")
                for section, key in missing
            ],
        )
    try:
        params = Params.model_validate(data)
    except ValidationError as err:
        raise _invalid(path, _entries(err, lines_of())) from None
    # checks across sections: a phase's layer count against the configured backbone
    errors = params.unfreeze_errors()
    if errors:
        lines = lines_of()
        raise _invalid(path, [f"{_at(k, lines)}{k}: {msg}" for k, msg in errors.items()])
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; raise ParamsError naming the file and key."""
    path = Path(path)
    try:
        text = path.read_text()
        data = read_yaml(text)
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return parse_params(data, path, text)


def report_valid(params: Params) -> None:
    """`fer validate`: the file parsed (the CLI already validated it); say what it holds."""
    phases = params.finetune.order()
    print(f"params ok: {len(phases)} phases ({' -> '.join(['base', *phases])})")
