"""Files fastft needs at run time, shipped in the wheel: the demo's data and the lock
(constraints.txt) that `fastft doctor` compares installed versions with. In a checkout they are
links to examples/ and the repo's constraints.txt, so there is one copy of each."""
