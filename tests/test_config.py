"""Recipe validation through Axolotl's own config loading, with the plugin registered."""

from __future__ import annotations

import pytest


@pytest.fixture()
def load(load_recipe):
    return load_recipe


def test_defaults_are_the_papers(load):
    cfg = load()
    assert cfg.nextquill is True
    assert (cfg.nextquill_alpha, cfg.nextquill_delta) == (0.05, 0.05)
    assert (cfg.nextquill_high_weight, cfg.nextquill_low_weight) == (0.9, 0.1)
    assert (
        cfg.nextquill_token_weighting
        and cfg.nextquill_causal_loss
        and cfg.nextquill_weight_causal_loss
    )
    assert str(cfg.nextquill_weight_source) == "initial"
    assert (
        cfg.nextquill_history_placeholder == "None"
        and str(cfg.nextquill_history_selection) == "recent"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nextquill_alpha": -0.1}, "nextquill_alpha must be >= 0"),
        ({"nextquill_low_weight": 0.95}, "must not exceed nextquill_high_weight"),
        ({"nextquill_high_weight": 1.5}, "nextquill_high_weight must lie in [0, 1]"),
        ({"nextquill_low_weight": -0.2}, "nextquill_low_weight must lie in [0, 1]"),
        ({"nextquill_history_k": True}, "a whole number is needed, not true"),  # it read as 1
        ({"nextquill_weight_batch_size": True}, "a whole number is needed, not true"),
        ({"sample_packing": True}, "set sample_packing: false"),
        ({"nextquill_include_history": False}, "nextquill_include_history: false"),
        # read as false by validation, but refused only after the model loaded
        ({"nextquill_include_history": "false"}, "nextquill_include_history: false"),
        ({"nextquill_include_history": 0}, "nextquill_include_history: false"),
        (
            {"pretraining_dataset": [{"path": "x", "type": "pretrain"}]},
            "remove pretraining_dataset",
        ),
        (
            {
                "gradient_checkpointing": True,
                "gradient_checkpointing_kwargs": {"use_reentrant": True},
            },
            "set gradient_checkpointing_kwargs: {use_reentrant: false}",
        ),
    ],
)
def test_bad_settings_fail_naming_key_and_fix(load, overrides, message):
    with pytest.raises(Exception) as error:
        load(**overrides)
    assert message in str(error.value)


def test_gradient_checkpointing_defaults_to_non_reentrant(load):
    assert load(gradient_checkpointing=True).gradient_checkpointing_kwargs == {
        "use_reentrant": False
    }
    # Without NextQuill, Axolotl's own default stays (reentrant in 0.19, non-reentrant in 0.21).
    plain = load(nextquill=False, gradient_checkpointing=True)
    stock = load(nextquill=None, plugins=None, gradient_checkpointing=True)
    assert plain.gradient_checkpointing_kwargs == stock.gradient_checkpointing_kwargs


def test_rules_across_fields_apply_only_when_nextquill_is_enabled(load):
    cfg = load(nextquill=False, nextquill_low_weight=0.95, sample_packing=True)
    assert cfg.nextquill is False
    # A field's own bounds are its type (pydantic's): refused whatever nextquill says.
    with pytest.raises(Exception, match="nextquill_alpha must be >= 0"):
        load(nextquill=False, nextquill_alpha=-1.0)


def test_plugin_is_inert_without_nextquill(load):
    from nextquill_plugin import NextQuillPlugin

    cfg = load(nextquill=False)
    plugin = NextQuillPlugin()
    assert plugin.get_trainer_cls(cfg) is None
    assert plugin.get_collator_cls_and_kwargs(cfg) is None
    assert plugin.get_training_args(cfg) is None
    enabled = load()
    assert plugin.get_trainer_cls(enabled).__name__ == "NextQuillTrainer"
    assert plugin.get_training_args(enabled)["nextquill_weight_source"] == "initial"


@pytest.mark.slow
def test_math_and_tools_import_without_axolotl_and_the_plugin_loads_by_its_recipe_name():
    """The math is reusable without Axolotl, and the CLI can go offline before Axolotl's
    import (bitsandbytes asks the Hub for kernels at import); Axolotl still finds the plugin
    under ``nextquill_plugin.NextQuillPlugin`` and through the package's entry point."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "import nextquill_plugin, nextquill_plugin.equations, nextquill_plugin.objective\n"
        "import nextquill_plugin.lm_head, nextquill_plugin.cli, nextquill_common.offline\n"
        "print(sorted(m for m in ('axolotl', 'bitsandbytes', 'huggingface_hub') if m in sys.modules))\n"
        "from axolotl.integrations.base import BasePlugin, load_plugin\n"
        "from importlib.metadata import entry_points\n"
        "(entry,) = [e for e in entry_points(group='axolotl.plugins') if e.name == 'nextquill']\n"
        "plugin = load_plugin('nextquill_plugin.NextQuillPlugin')\n"
        "print(isinstance(plugin, BasePlugin), entry.load() is type(plugin))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[:2] == ["[]", "True True"]


@pytest.mark.parametrize("key", ["cpu_ram_efficient_loading", "fsdp_cpu_ram_efficient_loading"])
def test_fsdp_ram_efficient_loading_with_theta0_weights_is_refused_with_the_fix(key):
    from nextquill_plugin.config_keys import nextquill_config_problems

    recipe = {"nextquill": True, "fsdp_version": 2, "fsdp_config": {key: True}}
    problems = " ".join(nextquill_config_problems(recipe))
    assert "cpu_ram_efficient_loading: true leaves" in problems
    assert "set it to false, or nextquill_weight_source: current" in problems
    assert nextquill_config_problems({**recipe, "nextquill_weight_source": "current"}) == []
    assert nextquill_config_problems({**recipe, "fsdp_config": {key: False}}) == []


@pytest.mark.parametrize(
    "recipe",
    [
        {"fsdp_config": {"auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}},
        {"fsdp_version": 1, "fsdp_config": {"reshard_after_forward": True}},
        {"fsdp_config": {"fsdp_version": 1}},
        {"fsdp": ["full_shard", "auto_wrap"]},
    ],
)
def test_fsdp1_is_refused_with_the_fix(recipe):
    from nextquill_plugin.config_keys import nextquill_config_problems

    problems = " ".join(nextquill_config_problems({"nextquill": True, **recipe}))
    assert "(FSDP1" in problems and "set fsdp_version: 2" in problems


def test_fsdp1_is_refused_when_axolotl_loads_the_recipe(load):
    with pytest.raises(Exception) as error:
        load(fsdp_config={"auto_wrap_policy": "TRANSFORMER_BASED_WRAP"})
    assert "set fsdp_version: 2" in str(error.value)


def test_settings_that_work_are_not_refused():
    from nextquill_plugin.config_keys import nextquill_config_problems

    for recipe in (
        {"fsdp_version": 2, "fsdp_config": {"reshard_after_forward": False}},
        {"fsdp_version": 2, "fsdp_config": {"reshard_after_forward": True}},
        {"fsdp_version": 2, "fsdp_config": {"offload_params": False}},
        {"fsdp_config": {"fsdp_version": 2}},
        {"deepspeed": {"zero_optimization": {"stage": 3}}},
        {"bf16": True},
        {"bf16": True, "adapter": "lora"},
        {"bf16": True, "flash_attention": True},
        {"deepspeed": {"zero_optimization": {"stage": 2}}},
        {"deepspeed": {"zero_optimization": {"stage": 3}}, "nextquill_weight_source": "current"},
    ):
        assert nextquill_config_problems({"nextquill": True, **recipe}) == [], recipe
