"""The structure the code promises: one-way package dependency, one declaration of each setting
and column, and a README map that matches the tree."""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest

from dataset_formats import contract
from nextquill_plugin.axolotl.args import NextQuillTrainingArgsMixin
from nextquill_plugin.config_keys import NextQuillArgs, ObjectiveArgs
from nextquill_plugin.settings import SETTING_PREFIX, NextQuillSettings

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dataset_formats", "nextquill_plugin", "nextquill_common")


def product_modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved)."""
    module_parts = list(path.relative_to(ROOT).with_suffix("").parts)
    package = module_parts[:-1] if module_parts[-1] != "__init__" else module_parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            names.add(".".join([*base, node.module or ""]).strip("."))
    return names


def test_imported_modules_resolves_relative_imports(tmp_path):
    # The helper itself must see a relative import, or the one-way test could pass vacuously.
    names = imported_modules(ROOT / "nextquill_plugin" / "evaluation" / "inspection.py")
    assert "nextquill_plugin.token_effects" in names
    assert "nextquill_plugin.evaluation.recipe_data" in names


def test_the_data_side_never_imports_the_plugin():
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            n for n in imported_modules(path) if n.startswith("nextquill_plugin")
        )
        for path in (ROOT / "dataset_formats").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_training_core_imports_neither_evaluation_nor_the_demo():
    core = [p for p in (ROOT / "nextquill_plugin").glob("*.py") if p.name != "cli.py"]
    for path in core:
        wings = [
            n
            for n in imported_modules(path)
            if n.startswith(("nextquill_plugin.evaluation", "nextquill_plugin.demo"))
        ]
        assert wings == [], path.name


def test_the_common_helpers_import_nothing_of_ours():
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            n
            for n in imported_modules(path)
            if n.startswith(("nextquill_plugin", "dataset_formats"))
        )
        for path in (ROOT / "nextquill_common").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_runtime_data_side_never_imports_the_offline_build():
    for path in (ROOT / "dataset_formats").glob("*.py"):
        assert not [n for n in imported_modules(path) if n.startswith("dataset_formats.build")]


def rule_spellings(path: Path) -> list[tuple[int, str]]:
    """Comparisons with ``delta`` and uses of lambda/epsilon (``high_weight``, ``low_weight``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                name = getattr(side, "id", None) or getattr(side, "attr", None)
                if name == "delta":
                    found.append((node.lineno, "compares with delta"))
        if isinstance(node, ast.Attribute) and node.attr in ("high_weight", "low_weight"):
            found.append((node.lineno, node.attr))
        if isinstance(node, ast.keyword) and node.arg in ("high_weight", "low_weight"):
            found.append((node.value.lineno, node.arg))
    return found


def test_the_preference_rule_is_applied_only_by_preference_rule(tmp_path):
    """eq. 3 (effect > delta -> lambda, else epsilon) has one home: ``PreferenceRule``. No other
    product module or benchmark compares with delta or reads lambda and epsilon."""
    homes = {
        "equations.py",
        "settings.py",
        "config_keys.py",
    }  # the rule, the settings, their checks
    spelled = {
        str(path.relative_to(ROOT)): rule_spellings(path)
        for path in [*product_modules(), *(ROOT / "benchmarks").glob("*.py")]
        if path.name not in homes
    }
    assert {k: v for k, v in spelled.items() if v} == {}
    probe = tmp_path / "probe.py"  # the scan sees each spelling
    probe.write_text("a = e > delta\nb = s.high_weight\nf(low_weight=0.1)\n")
    assert [kind for _, kind in rule_spellings(probe)] == [
        "compares with delta",
        "high_weight",
        "low_weight",
    ]


def column_literals(path: Path) -> list[tuple[int, object]]:
    """String constants equal to a contract column name, and the number -100, in a file."""
    names = {
        value for key, value in vars(contract).items() if key.isupper() and isinstance(value, str)
    }
    found = []
    tree = ast.parse(path.read_text())
    # Linux's AT_FDCWD is also -100; that constant is not a label.
    other_meanings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["AT_FDCWD"]
    }
    for node in ast.walk(tree):
        if id(node) in other_meanings:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
            found.append((node.lineno, node.value))
        if (
            isinstance(node, ast.UnaryOp)
            and isinstance(node.op, ast.USub)
            and isinstance(node.operand, ast.Constant)
            and node.operand.value == 100
        ):
            found.append((node.lineno, -100))
    return found


def test_column_names_and_ignore_index_are_spelled_only_in_the_contract():
    spelled = {
        str(path.relative_to(ROOT)): column_literals(path)
        for path in [*product_modules(), *(ROOT / "benchmarks").glob("*.py")]
        if path.name != "contract.py"
    }
    assert {k: v for k, v in spelled.items() if v} == {}
    assert column_literals(ROOT / "dataset_formats" / "contract.py")  # the scan sees literals


def test_each_objective_setting_is_declared_once_and_derived_everywhere():
    declared = {SETTING_PREFIX + f.name: f.default for f in fields(NextQuillSettings)}
    schema = {name: field.default for name, field in ObjectiveArgs.model_fields.items()}
    mixin = {f.name: f.default for f in fields(NextQuillTrainingArgsMixin)}
    assert schema == declared
    assert mixin == declared
    assert set(declared) <= set(NextQuillArgs.model_fields)
    for f in fields(NextQuillSettings):
        assert f.metadata["symbol"] and f.metadata["description"], f.name


def test_the_plugin_passes_every_setting_to_the_trainer():
    pytest.importorskip("axolotl")
    from nextquill_plugin.axolotl.plugin import NextQuillPlugin

    changed = {
        "nextquill_alpha": 0.3,
        "nextquill_delta": 0.2,
        "nextquill_high_weight": 0.8,
        "nextquill_low_weight": 0.3,
        "nextquill_token_weighting": False,
        "nextquill_causal_loss": False,
        "nextquill_weight_source": "current",
        "nextquill_weight_causal_loss": False,
        "nextquill_counterfactual_gradient": False,
        "nextquill_weight_normalization": "weights",
    }
    assert set(changed) == {SETTING_PREFIX + f.name for f in fields(NextQuillSettings)}
    cfg = NextQuillArgs.model_validate({"nextquill": True, **changed})
    passed = NextQuillPlugin().get_training_args(cfg)
    assert passed == changed
    trainer_args = SimpleNamespace(**passed)
    from nextquill_plugin.config_keys import settings_from

    assert settings_from(trainer_args) == NextQuillSettings(
        alpha=0.3,
        delta=0.2,
        high_weight=0.8,
        low_weight=0.3,
        token_weighting=False,
        causal_loss=False,
        weight_source="current",
        weight_causal_loss=False,
        counterfactual_gradient=False,
        weight_normalization="weights",
    )


CODE_MAP = ROOT / "docs" / "code_map.md"  # the README links it


def readme_layout_rows() -> list[str]:
    text = CODE_MAP.read_text()
    section = text.split("## Code layout", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE)


def test_the_readme_code_layout_matches_the_tree():
    rows = readme_layout_rows()
    assert rows, "docs/code_map.md has no code layout table"
    assert "docs/code_map.md" in (ROOT / "README.md").read_text()  # linked from the README
    missing = [row for row in rows if not (ROOT / row).exists()]
    assert missing == []
    listed_files = {row for row in rows if row.endswith(".py")}
    listed_folders = tuple(row for row in rows if row.endswith("/"))
    unlisted = [
        str(path.relative_to(ROOT))
        for path in product_modules()
        if path.name != "__init__.py"
        and str(path.relative_to(ROOT)) not in listed_files
        and not str(path.relative_to(ROOT)).startswith(listed_folders)
    ]
    assert unlisted == []
    section_text = CODE_MAP.read_text().split("## Code layout", 1)[1]
    for folder in listed_folders:  # every module of a listed folder is named in its row
        for path in (ROOT / folder).glob("*.py"):
            if path.name != "__init__.py":
                assert f"`{path.name}`" in section_text, path


def readme_key_rows() -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text().split("## Config keys", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`nextquill"):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_the_readme_key_table_lists_every_key_with_its_default_and_symbol():
    rows = readme_key_rows()
    keys = {name for name in NextQuillArgs.model_fields if name.startswith("nextquill")}
    assert set(rows) == keys
    for setting in fields(NextQuillSettings):
        default, paper, _meaning = rows[SETTING_PREFIX + setting.name]
        value = setting.default
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        assert default == f"`{shown}`", setting.name
        assert paper.startswith(setting.metadata["symbol"]), setting.name


# Each framework's glue is one subpackage of the plugin; the data side's recipe checks
# (dataset_formats/checks.py, run by the Axolotl plugin's hooks) log through Axolotl's logger.
FRAMEWORK_GLUE = {"axolotl": "nextquill_plugin/axolotl/", "trl": "nextquill_plugin/trl/"}
AXOLOTL_DATA_CHECKS = "dataset_formats/checks.py"


def importers_of(library: str) -> set[str]:
    return {
        str(path.relative_to(ROOT))
        for path in product_modules()
        if any(name.split(".")[0] == library for name in imported_modules(path))
    }


def module_file(name: str) -> Path | None:
    """The file of one of our modules by its dotted name (a package's __init__.py)."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def lazy_export_nodes(tree: ast.AST) -> set[int]:
    """Imports that run only on demand: a package's PEP 562 ``__getattr__`` and
    ``if TYPE_CHECKING:`` blocks."""
    lazy = set()
    for node in ast.walk(tree):
        on_demand = isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
        on_demand |= isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
        if on_demand:
            lazy.update(id(inner) for inner in ast.walk(node))
    return lazy


def our_imports(path: Path) -> set[Path]:
    """Our modules a file imports, ``from package import module`` included (not a package's
    lazy exports)."""
    found = set()
    tree = ast.parse(path.read_text())
    lazy = lazy_export_nodes(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or id(node) in lazy:
            continue
        for name in imported_modules_of_node(path, node):
            if name.split(".")[0] in PACKAGES and (file := module_file(name)):
                found.add(file)
    return found


def imported_modules_of_node(path: Path, node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    parts = list(path.relative_to(ROOT).with_suffix("").parts)[:-1]
    base = parts[: len(parts) - node.level + 1] if node.level else []
    module = ".".join([*base, node.module or ""]).strip(".")
    return [module, *(f"{module}.{alias.name}" for alias in node.names)]


def import_closure(start: list[Path]) -> set[Path]:
    seen, todo = set(), list(start)
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(our_imports(path))
    return seen


def glue_modules(framework: str) -> set[str]:
    return {str(p.relative_to(ROOT)) for p in (ROOT / FRAMEWORK_GLUE[framework]).glob("*.py")}


def test_each_framework_is_imported_only_by_its_own_subpackage():
    axolotl_importers = importers_of("axolotl")
    assert axolotl_importers & glue_modules("axolotl")  # the scan sees the glue's imports
    assert axolotl_importers - glue_modules("axolotl") == {AXOLOTL_DATA_CHECKS}
    assert importers_of("trl") and importers_of("trl") <= glue_modules("trl")


def test_the_trl_path_never_reaches_axolotl():
    trl_modules = sorted((ROOT / FRAMEWORK_GLUE["trl"]).glob("*.py"))
    reached = {str(p.relative_to(ROOT)) for p in import_closure(trl_modules)}
    assert "nextquill_plugin/objective.py" in reached  # the closure follows our imports
    assert reached & (glue_modules("axolotl") | {AXOLOTL_DATA_CHECKS}) == set()


def test_the_core_imports_no_framework_glue():
    """The math, the passes, the cache and the trainer mixin serve every framework: the
    package's top-level modules import no framework's glue and no framework (but the command
    line, which hands each framework's command to its subpackage)."""
    glue = set().union(*(glue_modules(framework) for framework in FRAMEWORK_GLUE))
    for path in (ROOT / "nextquill_plugin").glob("*.py"):
        if path.name == "cli.py":
            continue
        reached = {str(p.relative_to(ROOT)) for p in our_imports(path)}
        assert not reached & glue, path.name
        frameworks = {n.split(".")[0] for n in imported_modules(path)} & set(FRAMEWORK_GLUE)
        assert not frameworks, path.name


def test_each_framework_trainer_is_the_mixin_and_two_hooks():
    """A framework's trainer adds to the shared mixin only where it stores metrics and which
    split a log belongs to (plus its own construction)."""
    shared = {"_nextquill_metric_lists", "_logged_split", "__init__"}
    for framework, module in (("axolotl", "trainer.py"), ("trl", "trainer.py")):
        tree = ast.parse((ROOT / FRAMEWORK_GLUE[framework] / module).read_text())
        trainers = [
            node
            for node in tree.body
            if isinstance(node, ast.ClassDef)
            and any(getattr(b, "id", "") == "NextQuillTrainerMixin" for b in node.bases)
        ]
        assert len(trainers) == 1, framework
        methods = {n.name for n in trainers[0].body if isinstance(n, ast.FunctionDef)}
        assert methods <= shared, (framework, methods - shared)


MAX_FUNCTION_LINES = 70  # a longer function does several jobs: split it into named steps


def functions_of(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [
        node
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def test_no_product_function_is_longer_than_the_limit():
    long = {
        f"{path.relative_to(ROOT)}:{node.name}": node.end_lineno - node.lineno + 1
        for path in product_modules()
        for node in functions_of(path)
        if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    }
    assert long == {}


def silent_imports(path: Path) -> list[int]:
    """Lines of imports inside functions with no comment on their line or the line above."""
    lines = ["", *path.read_text().splitlines()]  # 1-based, with a line 0 above line 1
    return [
        node.lineno
        for function in functions_of(path)
        for node in ast.walk(function)
        if isinstance(node, ast.Import | ast.ImportFrom)
        and "#" not in lines[node.lineno] + lines[node.lineno - 1]
    ]


def test_every_import_inside_a_function_says_why(tmp_path):
    """Imports belong at the top; one kept inside a function (a heavy or optional library off a
    fast path) carries a comment on its line or the line above saying why."""
    silent = {
        str(path.relative_to(ROOT)): lines
        for path in product_modules()
        if (lines := silent_imports(path))
    }
    assert silent == {}
    sample = tmp_path / "sample.py"  # the scan sees a silent import and a said one
    sample.write_text("def f():\n    import json\n    import os  # why\n")
    assert silent_imports(sample) == [2]
