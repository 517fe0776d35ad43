"""The priced model catalog: logical model names, the provider offers behind them, and their prices."""
