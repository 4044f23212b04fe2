"""Labels posted after the fact, and the realized accuracy of each window they complete."""
