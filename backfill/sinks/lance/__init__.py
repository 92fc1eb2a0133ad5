"""Lance datasets (pylance): history slice writer and live appender."""
