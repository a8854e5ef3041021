"""Stage 2, train: examples -> a LoRA adapter in a run folder (trainer), with the batch plan
(batching, autobatch), metrics and plots, and data-parallel launching (launch, distributed).
Imports core and data."""
