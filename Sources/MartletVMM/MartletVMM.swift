/// The KVM virtual machine monitor behind `martlet-vmm`.
public enum MartletVMM {}
