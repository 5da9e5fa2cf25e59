"""The demonstration data: reads simulated from shared/data, the training inputs and the demo input."""
