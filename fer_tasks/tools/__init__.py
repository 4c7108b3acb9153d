"""User tools beside the pipeline: `fer predict`, `fer preset`, `fer metrics`, `fer compare`."""
