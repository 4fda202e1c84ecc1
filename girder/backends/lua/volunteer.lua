-- volunteer(distributor, node): queue node at distributor unless it is there already.

return volunteer(distributor, node)
