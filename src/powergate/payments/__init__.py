"""Payment channel adapters: WeChat Pay v3, Alipay, cashier, bank transfer and the sandbox.

Each adapter speaks one provider's protocol and nothing else: it signs requests, verifies and decrypts
notifications, and turns every answer into a value (``Verified``, ``Rejected``, ``ProviderFailure`` ...).
Matching a notification to an order and crediting the wallet is ``powergate.services.payments``'s job.
"""
