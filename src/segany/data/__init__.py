"""The dataset side of the paper (section 5): the SA-1B file format, converters from common
annotation formats into it, and the torch Dataset the trainer reads."""
