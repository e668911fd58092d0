"""The ledger: every Redis key and the verbs that change them."""
