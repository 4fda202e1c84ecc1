-- volunteer(distributor, node): queue node at distributor unless it is there already.

return volunteer(ARGV[1], ARGV[2])
