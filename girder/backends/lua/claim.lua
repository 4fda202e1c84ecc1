-- claim(node) -> {key, payload} or nil (see `claim` in common.lua).

return claim(ARGV[1])
