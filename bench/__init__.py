"""The side-by-side benchmark suite (`./dev bench`, bench/suite.py) and its contenders."""
