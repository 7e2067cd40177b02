"""FID for the suite: the Fréchet maths, the offline Inception, and image loading."""
