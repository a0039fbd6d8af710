// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title ReentrantToken — TEST ONLY: an ERC-20 that calls back into a contract from inside transfers
/// @notice Arm it with a target and calldata (e.g. PaymentSessions.settle/close/reclaim/openSession); the
///         next `transfer` or `transferFrom` makes that call before moving any balance, as a malicious
///         token would. With `bubble` the callback's revert reverts the whole transfer (so the outer
///         transaction fails with the guard's `ReentrancyGuardReentrantCall`); without it the revert is
///         swallowed and recorded (`reentered`, `lastRevertData`) and the transfer goes on, which shows the
///         outer call completing while the inner one was refused. Anyone may mint (it is a test token).
contract ReentrantToken is ERC20 {
    address public target;
    bytes public payload;
    bool public bubble;
    /// @notice Whether the last armed callback ran and succeeded.
    bool public reentered;
    /// @notice The revert data of the last armed callback that failed (empty if it succeeded).
    bytes public lastRevertData;

    event Reentry(address indexed target, bool success, bytes returnData);

    constructor() ERC20("Reentrant Token", "REENT") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice Makes the next transfer or transferFrom call `target_` with `payload_` (once).
    function arm(address target_, bytes calldata payload_, bool bubble_) external {
        target = target_;
        payload = payload_;
        bubble = bubble_;
    }

    function transfer(address to, uint256 value) public override returns (bool) {
        _reenter();
        return super.transfer(to, value);
    }

    function transferFrom(address from, address to, uint256 value) public override returns (bool) {
        _reenter();
        return super.transferFrom(from, to, value);
    }

    function _reenter() private {
        address callee = target;
        if (callee == address(0)) return;
        bytes memory data = payload;
        target = address(0); // disarm first: one callback per arming, no loops
        (bool success, bytes memory returnData) = callee.call(data);
        emit Reentry(callee, success, returnData);
        reentered = success;
        lastRevertData = success ? bytes("") : returnData;
        if (!success && bubble) {
            assembly ("memory-safe") {
                revert(add(returnData, 0x20), mload(returnData))
            }
        }
    }
}
