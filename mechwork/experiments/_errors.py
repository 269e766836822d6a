"""The error every malformed experiment or prompts file raises."""


class ExperimentError(ValueError):
    """An experiment file that cannot be run as written."""
