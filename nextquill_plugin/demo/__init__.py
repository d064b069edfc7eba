"""Scaffolding for the demo, the tests and the benchmarks: tiny local models, offline
`axolotl` runs in a subprocess, and the end-to-end demo. Not used when training with the plugin."""
