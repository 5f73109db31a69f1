"""The embedded arithmetic task: its problems (``problems``) and the recipe of the shipped tiny policy that
solves them badly at first (``warmup``). Its data module is ``rgra_lightning.data.ArithmeticDataModule``."""
