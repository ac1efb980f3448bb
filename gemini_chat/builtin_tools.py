"""Built-in tools an operator switches on with ``TOOLS``: time, calculator, fetch.

Each one fails with ``ToolError``, whose message is safe to show the user and tells the model what
to do differently (the tools are built with ``failure_error_function=None`` so the guard in
toolrun.py sees the error rather than the SDK's generic text).
"""

from __future__ import annotations

import ast
import difflib
import functools
import math
import operator
import zoneinfo
from collections.abc import Callable
from datetime import UTC, datetime

from agents import FunctionTool, function_tool
from simpleeval import (
    FeatureNotAvailable,
    FunctionNotDefined,
    InvalidExpression,
    NameNotDefined,
    OperatorNotDefined,
    SimpleEval,
)

from .config import Settings
from .webfetch import FetchError, fetch_readable


class ToolError(Exception):
    """A built-in tool could not do what it was asked; ``str(error)`` says why, in words."""


# --- time ----------------------------------------------------------------------------------------

# The clock the time tool reads; tests put a fixed one in its place.
now: Callable[[], datetime] = functools.partial(datetime.now, UTC)

ZONE_EXAMPLES = "Europe/Oslo, America/New_York, Asia/Tokyo or UTC"


@functools.cache
def _zones_by_lowercase() -> dict[str, str]:
    return {name.lower(): name for name in zoneinfo.available_timezones()}


def _either(names: list[str]) -> str:
    return " or ".join(names) if len(names) < 3 else f"{', '.join(names[:-1])} or {names[-1]}"


def _zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA zone of ``name``, matched regardless of case; ToolError with close names if
    there is none."""
    name = name.strip() or "UTC"
    zones = _zones_by_lowercase()
    canonical = zones.get(name.lower()[:100])
    if canonical is None:
        # "oslo" or "new york" name a zone by its city: offer the zones that end that way.
        city = name.lower().replace(" ", "_")
        suggestions = [zone for key, zone in zones.items() if key.endswith("/" + city)]
        suggestions += difflib.get_close_matches(name.lower()[:100], zones, n=3, cutoff=0.75)
        suggestions = [zones.get(item, item) for item in dict.fromkeys(suggestions)][:3]
        hint = f" Did you mean {_either(suggestions)}?" if suggestions else ""
        raise ToolError(
            f"Unknown time zone {name[:100]!r}: use an IANA zone name (Area/City) such as "
            f"{ZONE_EXAMPLES}.{hint}"
        )
    return zoneinfo.ZoneInfo(canonical)


def time_in_zone(zone: str, moment: datetime) -> str:
    """``moment`` in ``zone``, e.g. "Tuesday 2026-12-01 16:19:23 CET (UTC+01:00), Europe/Oslo"."""
    info = _zone(zone)
    local = moment.astimezone(info)
    offset = local.strftime("%z")
    return (
        f"{local:%A %Y-%m-%d %H:%M:%S} {local.tzname()} (UTC{offset[:3]}:{offset[3:]}), {info.key}"
    )


@function_tool(failure_error_function=None, strict_mode=False)
def current_time(zone: str = "UTC") -> str:
    """The current date and time in a time zone, with the weekday and the offset from UTC.

    Args:
        zone: An IANA time zone name such as Europe/Oslo, America/New_York or Asia/Tokyo;
            UTC when omitted.
    """
    return time_in_zone(zone, now())


# --- calculator ----------------------------------------------------------------------------------

MAX_EXPRESSION_CHARS = 1_000
MAX_NESTING = 60
# Whole numbers up to about 1,200 digits: enough for any arithmetic a person asks for, small
# enough that no product or power of them takes noticeable time or memory.
MAX_INTEGER_BITS = 4_000
MAX_FACTORIAL = 170
MAX_ROUND_DIGITS = 30


def _bounded(value: object) -> int | float:
    """Every value the calculator makes passes here: real numbers of bounded size only."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, complex):
            raise ToolError("the result is not a real number")
        raise ToolError("only numbers can be calculated")
    if isinstance(value, int) and value.bit_length() > MAX_INTEGER_BITS:
        raise ToolError("the result is too large (more than about 1,200 digits)")
    if isinstance(value, float) and math.isinf(value):
        raise ToolError("the result is too large for a number")
    if isinstance(value, float) and math.isnan(value):
        raise ToolError("the result is not a number")
    return value


def _power(base: int | float, exponent: int | float) -> int | float:
    # Refuse before computing: 9 ** 9 ** 9 would take minutes and gigabytes to finish.
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * math.log2(abs(base)) > MAX_INTEGER_BITS:
            raise ToolError("the result is too large (more than about 1,200 digits)")
    return base**exponent


def _checked(function: Callable[..., object]) -> Callable[..., int | float]:
    """``function`` with its arguments and result held to the calculator's numbers."""

    @functools.wraps(function)
    def run(*arguments: object) -> int | float:
        return _bounded(function(*(_bounded(argument) for argument in arguments)))

    return run


def _factorial(number: int | float) -> int:
    if not (isinstance(number, int) or number.is_integer()) or not 0 <= number <= MAX_FACTORIAL:
        raise ToolError(f"factorial takes a whole number from 0 to {MAX_FACTORIAL}")
    return math.factorial(int(number))


def _round(number: int | float, digits: int = 0) -> int | float:
    if not isinstance(digits, int) or abs(digits) > MAX_ROUND_DIGITS:
        raise ToolError(f"round takes a whole number of digits from -30 to {MAX_ROUND_DIGITS}")
    return round(number, digits) if digits else round(number)


_OPERATORS = {
    ast.Add: _checked(operator.add),
    ast.Sub: _checked(operator.sub),
    ast.Mult: _checked(operator.mul),
    ast.Div: _checked(operator.truediv),
    ast.FloorDiv: _checked(operator.floordiv),
    ast.Mod: _checked(operator.mod),
    ast.Pow: _checked(_power),
    ast.USub: _checked(operator.neg),
    ast.UAdd: _checked(operator.pos),
}
_FUNCTIONS = {
    name: _checked(function)
    for name, function in {
        "sqrt": math.sqrt,
        "exp": math.exp,
        "log": math.log,
        "log10": math.log10,
        "log2": math.log2,
        "sin": math.sin,
        "cos": math.cos,
        "tan": math.tan,
        "asin": math.asin,
        "acos": math.acos,
        "atan": math.atan,
        "degrees": math.degrees,
        "radians": math.radians,
        "abs": abs,
        "floor": math.floor,
        "ceil": math.ceil,
        "round": _round,
        "factorial": _factorial,
    }.items()
}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
ALLOWED = (
    "numbers, + - * / // % ** (power), parentheses, "
    + ", ".join(_FUNCTIONS)
    + " and "
    + ", ".join(_CONSTANTS)
)


class _Arithmetic(SimpleEval):
    """simpleeval held to arithmetic: numbers, the operators and functions above, nothing else
    (no strings, comparisons, attributes, subscripts, keywords or comprehensions)."""

    def __init__(self) -> None:
        super().__init__(operators=_OPERATORS, functions=_FUNCTIONS, names=_CONSTANTS)
        kept = (ast.Constant, ast.Name, ast.UnaryOp, ast.BinOp, ast.Call)
        self.nodes = {node: handler for node, handler in self.nodes.items() if node in kept}

    def _eval_constant(self, node: ast.Constant) -> int | float:
        return _bounded(node.value)

    def _eval_name(self, node: ast.Name) -> object:
        if node.id in self.functions:
            # Functions are only called, never passed around as values.
            raise ToolError(f"{node.id} is a function: call it, as in {node.id}(2)")
        if node.id not in self.names:
            raise NameNotDefined(node.id, self.expr)
        return self.names[node.id]


def _depth(tree: ast.AST) -> int:
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _number_text(value: int | float) -> str:
    # 15 significant digits: 0.1 + 0.2 reads 0.3, sqrt(16) reads 4.
    return str(value) if isinstance(value, int) else format(value, ".15g")


def calculation(expression: str) -> str:
    """The value of an arithmetic ``expression`` as text; ToolError saying why when it has none."""
    shown = expression if len(expression) <= 80 else expression[:77] + "..."
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"The expression is longer than {MAX_EXPRESSION_CHARS:,} characters.")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
        if _depth(tree) > MAX_NESTING:
            raise ToolError("the expression is nested too deeply")
        value = _bounded(_Arithmetic().eval(expression, previously_parsed=tree.body))
    except SyntaxError as error:
        where = f" at character {error.offset}" if error.offset else ""
        raise ToolError(
            f"Could not calculate {shown!r}: not an arithmetic expression ({error.msg}{where}); "
            f"use {ALLOWED}."
        ) from None
    except (RecursionError, MemoryError):
        raise ToolError(f"Could not calculate {shown!r}: the expression is too complex.") from None
    except ZeroDivisionError:
        raise ToolError(f"Could not calculate {shown!r}: division by zero.") from None
    except (NameNotDefined, FunctionNotDefined) as error:
        name = getattr(error, "name", None) or getattr(error, "func_name", "")
        raise ToolError(
            f"Could not calculate {shown!r}: unknown name {name!r}; use {ALLOWED}."
        ) from None
    except (FeatureNotAvailable, OperatorNotDefined, InvalidExpression):
        hint = " (write powers as **)" if "^" in expression else ""
        raise ToolError(
            f"Could not calculate {shown!r}: only {ALLOWED} are allowed{hint}."
        ) from None
    except OverflowError:
        raise ToolError(f"Could not calculate {shown!r}: the result is too large.") from None
    except (ValueError, TypeError) as error:
        reason = str(error)
        if reason == "math domain error":
            reason = (
                "a function was given a value outside its domain "
                "(such as the square root or logarithm of a negative number)"
            )
        # Otherwise Python's own words, such as "sqrt() takes exactly one argument (2 given)".
        raise ToolError(f"Could not calculate {shown!r}: {reason}.") from None
    except ToolError as error:
        raise ToolError(f"Could not calculate {shown!r}: {error}.") from None
    return _number_text(value)


@function_tool(failure_error_function=None)
def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression and return its value. Use it for any arithmetic
    rather than working it out yourself.

    Supports numbers, + - * / // % ** (power), parentheses, sqrt, exp, log (natural, or
    log(x, base)), log10, log2, sin, cos, tan, asin, acos, atan (radians), degrees, radians,
    abs, floor, ceil, round, factorial, and the constants pi, e and tau.

    Args:
        expression: The expression, e.g. "(2 + 3) * sqrt(16) / 7" or "1.07 ** 10 * 2500".
    """
    return calculation(expression)


# --- fetch ---------------------------------------------------------------------------------------


def fetch_seconds(tool_timeout: float) -> float:
    """The fetch's own time limit: within the guard's TOOL_TIMEOUT_SECONDS (so its clearer message
    comes first), and never above 20 s, as a page that slow is rarely worth the wait."""
    return min(20.0, tool_timeout * 0.8)


def build_fetch_page(max_bytes: int, seconds: float) -> FunctionTool:
    """The ``fetch_page`` tool reading at most ``max_bytes`` of a page within ``seconds``."""

    @function_tool(failure_error_function=None, strict_mode=False)
    async def fetch_page(url: str, links: bool = False) -> str:
        """Fetch a public web page and return its title and main text (as Markdown). Reads
        HTML, plain text and JSON; pages on private networks are refused.

        Args:
            url: The page's full address, starting with http:// or https://.
            links: Keep the page's links in the text, as Markdown links.
        """
        try:
            return await fetch_readable(url, max_bytes=max_bytes, seconds=seconds, links=links)
        except FetchError as error:
            raise ToolError(str(error)) from None

    return fetch_page


def build_builtin_tools(settings: Settings) -> dict[str, FunctionTool]:
    """The built-in tools by their name in ``TOOLS``, set up with ``settings``."""
    return {
        "time": current_time,
        "calculator": calculate,
        "fetch": build_fetch_page(settings.fetch_max_bytes, fetch_seconds(settings.tool_timeout)),
    }


# By the name used in ``TOOLS``, with the default settings (build_tools uses the app's own).
BUILTIN_TOOLS: dict[str, FunctionTool] = build_builtin_tools(Settings())
