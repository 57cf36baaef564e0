"""The catalogue of bad inputs and faults: each case asserts the exception (or exit code) and that
the message names the offending value."""
