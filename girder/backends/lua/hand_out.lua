-- hand_out(distributor, even_share) -> {key1, volunteer1, key2, volunteer2, ...}

return hand_out(ARGV[1], ARGV[2] == '1')
