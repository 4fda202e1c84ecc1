-- ask_to_cancel(owner, job) -> {asked, posts}: asked is 1, or 0 when owner is not registered;
-- a cancellation notice with an empty key ("!0:<job>") goes to the client whose job it is
-- (posts as in complete.lua when its inbox is in its own slot).

if not is_registered(owner) then
  return {0, POSTS}
end
post_note(owner, nil, '!0:' .. job, '')
return {1, POSTS}
