package state

import (
	"reflect"
	"testing"
)

// TestTotalsAddEveryField fails when a field added to Totals is not summed
// by Add.
func TestTotalsAddEveryField(t *testing.T) {
	var one Totals
	v := reflect.ValueOf(&one).Elem()
	for i := range v.NumField() {
		switch f := v.Field(i); f.Kind() {
		case reflect.Uint64:
			f.SetUint(uint64(i + 1))
		case reflect.Int:
			f.SetInt(int64(i + 1))
		case reflect.Float64:
			f.SetFloat(float64(i + 1))
		default:
			t.Fatalf("Totals.%s: kind %v not covered by this test", v.Type().Field(i).Name, f.Kind())
		}
	}
	sum := one
	sum.Add(one)
	s := reflect.ValueOf(sum)
	for i := range s.NumField() {
		got, want := s.Field(i), v.Field(i)
		var ok bool
		switch got.Kind() {
		case reflect.Uint64:
			ok = got.Uint() == 2*want.Uint()
		case reflect.Int:
			ok = got.Int() == 2*want.Int()
		case reflect.Float64:
			ok = got.Float() == 2*want.Float()
		}
		if !ok {
			t.Errorf("Add: Totals.%s = %v, want %v doubled", s.Type().Field(i).Name, got, want)
		}
	}
}
