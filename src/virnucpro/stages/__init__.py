"""The nine stages of the pipeline, one module each (and the training of the classifier); they import only `io` and `models`."""
