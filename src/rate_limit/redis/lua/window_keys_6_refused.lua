
    reply[r + 1], reply[r + 2], reply[r + 3] = -1 - remaining, reset, wait
  end
  r = r + 3
end
return reply
