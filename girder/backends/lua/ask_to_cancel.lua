-- ask_to_cancel(owner, job) -> 1, or 0 when owner is not registered: a cancellation notice with
-- an empty key ("!0:<job>") in the inbox of the client whose job it is.

if not is_registered(owner) then
  return 0
end
call('RPUSH', k_inbox(owner), '!0:' .. job)
return 1
