
reply[1] = 1
local writes = {}
