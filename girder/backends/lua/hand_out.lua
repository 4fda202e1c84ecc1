-- hand_out(distributor, even_share) -> {key1, volunteer1, key2, volunteer2, ...}

return hand_out(distributor, even_share == '1', now_ms())
