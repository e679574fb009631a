"""What every catalog entry is made of: the LayerSpec record, the tensors its rules see, the
errors and advice they give, and the few helpers the families share.

Shapes never include the batch dimension; `dim`/`dims` parameters count it, as in PyTorch.
Messages are data (i18n.Message): the English template and its values, rendered at the edge.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from i18n import Message, N_, msg

Shape = tuple[int, ...]
MAX_SIZE = 10_000_000  # the largest size, count or index any int parameter may hold
MAX_RANK = 6

CATEGORIES = (
    "Core",
    "Convolution",
    "Pooling",
    "Normalisation",
    "Regularisation",
    "Activation",
    "Recurrent",
    "Attention",
    "Merge",
)


@dataclass(frozen=True)
class Tensor:
    """What flows along an edge: a per-sample shape, its dtype, the producing layer's type and
    whether that layer gives time-first sequences ([T, F], its spec's `sequence_output`)."""

    shape: Shape
    dtype: str = "float32"
    source_type: str = ""
    time_first: bool = False


@dataclass(frozen=True)
class Fix:
    """A suggested edit, relative to the node: insert a layer on one input edge, set this node's
    params, or remove the layer feeding one input."""

    why: Message
    insert_type: str | None = None
    insert_params: dict[str, Any] = field(default_factory=dict)
    on_input: int = 0
    set_params: dict[str, Any] | None = None
    remove_input: bool = False


class LayerError(Exception):
    """A shape rule failed: the message says what is wrong and how to fix it."""

    def __init__(self, text: Message, fix: Fix | None = None) -> None:
        super().__init__(str(text))
        self.text = text
        self.message = str(text)
        self.fix = fix


@dataclass(frozen=True)
class Advice:
    """A warning: the graph runs, but probably not as meant."""

    text: Message
    fix: Fix | None = None

    @property
    def message(self) -> str:
        return str(self.text)


class NotMappable(Exception):
    """A live torch module (or call) that no catalog entry can stand for; the message says why."""

    def __init__(self, message: Message) -> None:
        super().__init__(str(message))
        self.message = message


# ---------------------------------------------------------------------------------------------
# Parameter types. Each field's description is the phrase used in error messages and form help.


class Params(BaseModel):
    """Every layer's params: strict types, no unknown keys, finite floats only."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class NoParams(Params):
    pass


def _spatial(value: int | list[int], n: int, minimum: int) -> int | list[int]:
    values = [value] * n if isinstance(value, int) else value
    if len(values) != n or any(not minimum <= v <= MAX_SIZE for v in values):
        raise ValueError(f"needs {n} values from {minimum} to {MAX_SIZE}")
    return value


def _sizes(n: int, minimum: int) -> Any:
    """PyTorch's `int or tuple` for n spatial dims: an int, or a list of n ints >= minimum."""
    return Annotated[int | list[int], AfterValidator(lambda v: _spatial(v, n, minimum))]


# By the number of spatial dims (1d/2d/3d variants take the dimension as a parameter, as torch's
# _ConvNd does): a size (kernel, stride, output size) and a padding, with their descriptions.
SIZE: dict[int, Any] = {n: _sizes(n, 1) for n in (1, 2, 3)}
PAD: dict[int, Any] = {n: _sizes(n, 0) for n in (1, 2, 3)}
SIZE_TEXT = {
    1: N_("a positive int"),
    2: N_("a positive int or list of 2"),
    3: N_("a positive int or list of 3"),
}
PAD_TEXT = {
    1: N_("an int >= 0"),
    2: N_("an int >= 0 or list of 2"),
    3: N_("an int >= 0 or list of 3"),
}
SIZE1 = SIZE_TEXT[1]

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Eps = Annotated[float, Field(gt=0.0, le=1.0)]
PROBABILITY = N_("a probability in [0, 1]")
EPS = N_("a small positive float, at most 1")
BOOL = N_("true or false")
DIM = N_("an int (counts the batch)")


def count(description: str = SIZE1, default: Any = ...) -> Any:
    """A positive int field bounded by MAX_SIZE (sizes, counts, heads)."""
    return Field(default, ge=1, le=MAX_SIZE, description=description)


def dim_field(default: Any = ...) -> Any:
    """A batch-counting dim, bounded by the largest rank a shape may have."""
    return Field(default, ge=-MAX_RANK - 1, le=MAX_RANK, description=DIM)


# ---------------------------------------------------------------------------------------------
# Small helpers for the rules and the emitted code.


def fmt(value: Any) -> str:
    """Python source for a parameter value (lists become tuples, strings are escaped)."""
    if isinstance(value, list):
        return "(" + ", ".join(fmt(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, str):
        return json.dumps(value)  # double quotes, as black writes them; escapes are Python's too
    return repr(value)


def call(func: str, *args: Any, **kwargs: Any) -> str:
    """Constructor source: positional args as given, keyword values through fmt."""
    parts = [str(a) for a in args] + [f"{k}={fmt(v)}" for k, v in kwargs.items()]
    return f"{func}({', '.join(parts)})"


def changed(p: Params, *names: str) -> dict[str, Any]:
    """The named params whose value differs from the default (so the code shows only choices)."""
    fields = type(p).model_fields
    return {
        n: getattr(p, n)
        for n in names
        if fields[n].is_required() or getattr(p, n) != fields[n].default
    }


def shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def as_tuple(value: int | list[int] | None, n: int) -> tuple[int, ...]:
    return tuple([value] * n) if isinstance(value, int) else tuple(value or ())


def compact(value: Any) -> Any:
    """PyTorch's tuples as the file format writes them: (5, 5) -> 5, (3, 5) -> [3, 5]."""
    if isinstance(value, (tuple, list)):
        values = [int(v) for v in value]
        return values[0] if len(set(values)) == 1 else values
    return value


def need_rank(
    x: Tensor, ranks: Sequence[int], layout: Message | str, hint: Message | str = ""
) -> None:
    if len(x.shape) not in ranks:
        raise LayerError(
            msg(
                "needs {layout} input, got {shape}{hint}",
                layout=layout,
                shape=shape_text(x.shape),
                hint=hint,
            )
        )


def full_dim(dim: int, rank: int, what: str = "dim") -> int:
    """Normalise a batch-counting dim for a per-sample rank; the batch dim itself is refused."""
    full = rank + 1
    if not -full <= dim < full:
        raise LayerError(
            msg(
                "{what} {dim} is out of range: the input has {full} dims with the batch",
                what=what,
                dim=dim,
                full=full,
            )
        )
    dim = dim % full
    if dim == 0:
        raise LayerError(
            msg(
                "{what} 0 is the batch dimension; dims count the batch, so use 1 or more", what=what
            )
        )
    return dim


def fitting_divisor(n: int, limit: int) -> int:
    """A divisor of n that is at most limit: the largest within 64 steps below the limit, else
    gcd(n, limit). A bounded number of steps, however large the sizes (a fix, not a search)."""
    top = min(n, limit)
    for d in range(top, max(top - 64, 0), -1):
        if n % d == 0:
            return d
    return math.gcd(n, limit)


def as_float(x: Tensor) -> Tensor:
    return Tensor(x.shape, "float32")


# The defaults of a LayerSpec, as plain named functions.


def keep_shape(p: Any, xs: list[Tensor]) -> Tensor:
    """Shape rule of elementwise layers: the output is shaped like the input."""
    return as_float(xs[0])


def no_weights(p: Any, xs: list[Tensor]) -> int:
    return 0


def no_macs(p: Any, xs: list[Tensor], y: Tensor) -> int:
    return 0


def no_advice(p: Any, xs: list[Tensor]) -> list[Advice]:
    return []


def no_params_from_module(m: Any) -> dict[str, Any]:
    """Read back a torch module that has no options the catalog keeps."""
    return {}


def call_module(p: Any, attr: str, args: list[str]) -> str:
    """Forward expression of a layer that is a module attribute called on its one input."""
    return f"self.{attr}({args[0]})"


def same_shape_explained(p: Any, xs: list[Tensor], y: Tensor) -> Message:
    return msg("{before} -> {after}", before=shape_text(xs[0].shape), after=shape_text(y.shape))


@dataclass(frozen=True)
class Argument:
    """One param as a functional form passes it: F.leaky_relu(x, 0.2) or negative_slope=0.2
    is Argument("negative_slope", 1, 0.01): the param, its position and its default."""

    param: str
    position: int
    default: Any = None


# Example inputs (per sample) the examples share, so the coverage graphs are few: an image, a
# signal [C, L], a sequence [T, F] and token ids [T].
IMAGE: Shape = (4, 6, 6)
SIGNAL: Shape = (6, 8)
SEQUENCE: Shape = (8, 6)
TOKENS: Shape = (5,)


@dataclass(frozen=True)
class Example:
    """One valid use of a layer: a per-sample input shape, its dtype and its params (none
    given: the starter's). The ONNX coverage graphs are built from every entry's examples."""

    shape: Shape = IMAGE
    params: Mapping[str, Any] = field(default_factory=dict)
    dtype: str = "float32"


def no_onnx_limit(p: Any, xs: list[Tensor], y: Tensor) -> Message | None:
    return None


@dataclass(frozen=True)
class LayerSpec:
    """One layer type, as data: read an entry top to bottom to know everything about it.

    `infer` raises LayerError; `module` returns constructor source (None: no attribute, the
    forward expression alone does the work); `torch_modules` are names in torch.nn this entry
    stands for, read back by `params_from_module`; `functional` are qualified names of the
    functional forms and tensor methods, whose params are `functional_args` (by position and
    keyword) or, where reading them takes more than that, the importer's reader named by
    `functional_reader`; `second_output` says what item 1 of the torch module's tuple output
    holds (the graph keeps item 0). `starter` holds the palette's params for a new node and
    `fitted_starter` those that depend on its input shape (heads that divide the width).
    `sequence_output`: it gives time-first [T, F]; `view_of_input`: its output is its input or
    a view of it (no new memory); `takes_token_ids`: it accepts int64 input; `attends`: it
    holds attention weights a run can show. `onnx_limit` says why a node cannot export to ONNX
    (None: it can); `examples` are valid uses (the ONNX coverage graphs); `shapes` is the
    README table's input -> output column. `helper` is (name, source) of a function or class
    model.py defines when the code uses it.
    """

    name: str
    category: str
    description: str
    formula: str
    params: type[Params]
    infer: Callable[[Any, list[Tensor]], Tensor]
    torch_modules: tuple[str, ...] = ()
    functional: tuple[str, ...] = ()
    params_from_module: Callable[[Any], dict[str, Any]] | None = None
    starter: Mapping[str, Any] = field(default_factory=dict)
    min_inputs: int = 1
    max_inputs: int | None = 1
    count_params: Callable[[Any, list[Tensor]], int] = no_weights
    macs: Callable[[Any, list[Tensor], Tensor], int] = no_macs
    module: Callable[[Any, list[Tensor]], str] | None = None
    call: Callable[[Any, str, list[str]], str] = call_module
    explain: Callable[[Any, list[Tensor], Tensor], Message] | None = None
    advise: Callable[[Any, list[Tensor]], list[Advice]] = no_advice
    key_params: tuple[str, ...] = ()
    helper: tuple[str, str] | None = None
    functional_args: tuple[Argument, ...] = ()
    functional_reader: str | None = None
    second_output: str | None = None
    fitted_starter: Callable[[Shape], dict[str, Any]] | None = None
    sequence_output: bool = False
    view_of_input: bool = False
    takes_token_ids: bool = False
    attends: bool = False
    onnx_limit: Callable[[Any, list[Tensor], Tensor], Message | None] = no_onnx_limit
    examples: tuple[Example, ...] = (Example(),)
    shapes: str = "shape kept"
