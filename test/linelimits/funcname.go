package main

import (
	"go/ast"
)

// funcName names a function or method declaration, "T.m" for methods.
func funcName(decl ast.Decl) (string, bool) {
	fn, ok := decl.(*ast.FuncDecl)
	if !ok || fn.Body == nil {
		return "", false
	}
	if fn.Recv == nil || len(fn.Recv.List) == 0 {
		return fn.Name.Name, true
	}
	t := fn.Recv.List[0].Type
	for {
		switch x := t.(type) {
		case *ast.StarExpr:
			t = x.X
			continue
		case *ast.IndexExpr:
			t = x.X
			continue
		case *ast.IndexListExpr:
			t = x.X
			continue
		case *ast.Ident:
			return x.Name + "." + fn.Name.Name, true
		}
		return fn.Name.Name, true
	}
}
