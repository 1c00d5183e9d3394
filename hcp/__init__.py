"""hcp: rate how a healthcare provider talks with a patient, locally."""

__version__ = "0.1.0"
