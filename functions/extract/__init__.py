"""Extract Lambda: page CoinGecko ``/coins/markets`` and ``/global`` into the raw zone of the lake.

Modules: ``config`` (environment and the API-key secret), ``api_errors`` (CoinGecko error bodies,
pure), ``paging`` (which pages to fetch and when to stop, pure), ``client`` (HTTP with retries)
and ``handler`` (the Lambda entry point wiring them to the lake).
"""
