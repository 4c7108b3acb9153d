"""The write-up's five fine-tuning configurations, one params-override YAML each.

Each file holds only the keys that differ from `params.yaml` (`model.weights`,
`finetune.phases`, `finetune.final`); `fer compare` runs each as a named DVC
experiment. See docs/experiments.md.
"""
