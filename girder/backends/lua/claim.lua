-- claim(node) -> {key, payload} or nil (see `claim` in common.lua).

local found = claim(ARGV[1], false)
if found then
  return {found[1], found[2]}
end
return nil
