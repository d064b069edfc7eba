"""The shipped recipes (in a wheel: nextquill_plugin.recipes); `nextquill recipes DEST` copies them."""
