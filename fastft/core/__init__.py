"""Stage 0, core: what every stage shares. The typed objects that cross stages (TrainConfig, the
run record and folder), Qwen3's chat facts, errors, the cache, signals, child processes, disk
preflight, log capture and the console UI. Imports nothing from the stages."""
