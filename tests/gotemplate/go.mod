module fastft/gotemplate

go 1.19
